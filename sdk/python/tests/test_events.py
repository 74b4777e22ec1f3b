"""The SDK follows a job over server-sent events and resumes after a dropped connection from the
last position: nothing missed, nothing repeated. The drops are real: a TCP relay between the SDK
and the scheduler cuts every event stream after 900 bytes."""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

import tessera
from tessera._client import Client
from tessera._events import job_events


def _hang_up(connection: socket.socket) -> None:
    """Ends a connection at once (FIN to the peer), also while another thread reads from it."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()


class CuttingRelay:
    """Relays TCP to the scheduler; an event-stream response is cut after `budget` bytes."""

    def __init__(self, target_url: str, budget: int):
        target = urlparse(target_url)
        self.target = (target.hostname, target.port)
        self.budget = budget
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        streaming = threading.Event()

        def requests() -> None:  # client → scheduler
            try:
                while data := client.recv(65536):
                    if b"/events" in data:
                        streaming.set()
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                _hang_up(upstream)

        threading.Thread(target=requests, daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(65536):
                if streaming.is_set():
                    data = data[: max(0, self.budget - sent)]
                    sent += len(data)
                client.sendall(data)
                if streaming.is_set() and sent >= self.budget:
                    with self.lock:
                        self.cuts += 1
                    break
        except OSError:
            pass
        finally:
            _hang_up(client)
            _hang_up(upstream)

    def close(self) -> None:
        _hang_up(self.listener)


def shout(x):
    print(f"line {x}")
    return x * 2


def test_dropped_event_streams_resume_without_losses_or_repeats(cluster):
    relay = CuttingRelay(cluster.url, budget=900)
    try:
        job = tessera.compute_for(range(12), shout, scheduler=relay.url)
        console = []
        results = []
        job.on("console", console.append).on("result", results.append)
        assert job.wait() == [x * 2 for x in range(12)]
        assert relay.cuts >= 2
        assert sorted(line.text for line in console) == sorted(f"line {x}" for x in range(12))
        assert sorted(event.slice for event in results) == list(range(12))
        # The whole log again, from position 0, through the cutting relay.
        events = list(job_events(Client(relay.url), job.job_id))
        positions = [event.position for event in events if event.position is not None]
        assert positions == list(range(1, len(positions) + 1))
        assert events[-1].kind == "state" and events[-1].data["state"] == "complete"
        assert sorted(e.data["slice"] for e in events if e.kind == "result") == list(range(12))
    finally:
        relay.close()
