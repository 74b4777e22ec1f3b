"""A job's events — result, console, progress, state — from the scheduler, resumable by position.

`job_events` reads the server-sent-events stream `GET /v1/jobs/{id}/events` and reconnects from
the last `id:` it saw, so a dropped connection misses nothing. A scheduler without that endpoint
(404 with no protocol error body) is followed by polling the status, results and console
endpoints instead, behind the same interface.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import httpx

from ._client import Client, raise_for_refusal
from .errors import TesseraError

FINAL_STATES = ("complete", "complete_with_errors", "failed", "cancelled")


@dataclass
class Event:
    """One event of a job: `kind` is result, console, progress or state; `position` orders them."""

    position: Optional[int]  # None for progress, which the scheduler does not store
    kind: str
    data: dict[str, Any]


class _NoEventsEndpoint(Exception):
    pass


def job_events(client: Client, job_id: str, after: int = 0, deadline: Optional[float] = None) -> Iterator[Event]:
    """Every event after `after` until the job's final `state` event."""
    try:
        yield from _server_sent(client, job_id, after, deadline)
    except _NoEventsEndpoint:
        yield from _polled(client, job_id, deadline)


def _check_deadline(deadline: Optional[float]) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError("timed out waiting for the job's results")


def _server_sent(client: Client, job_id: str, after: int, deadline: Optional[float]) -> Iterator[Event]:
    position = after
    failures = 0
    while True:
        _check_deadline(deadline)
        read_timeout = 30.0 if deadline is None else max(0.1, min(30.0, deadline - time.monotonic()))
        try:
            with client.http.stream(
                "GET",
                f"/v1/jobs/{job_id}/events",
                params={"after": position},
                headers={"Accept": "text/event-stream", "Last-Event-ID": str(position)},
                timeout=httpx.Timeout(30.0, read=read_timeout),
            ) as response:
                if response.status_code == 404:
                    response.read()
                    try:
                        body = response.json()
                    except ValueError:
                        body = None
                    if not isinstance(body, dict) or "code" not in body:
                        raise _NoEventsEndpoint()
                if response.status_code >= 400:
                    response.read()
                    raise_for_refusal(response)
                received = 0
                for event in _parse(response.iter_lines()):
                    failures = 0
                    received += 1
                    if event.position is not None:
                        if event.position <= position:
                            continue  # already delivered before a reconnection
                        position = event.position
                    yield event
                    if event.kind == "state" and event.data.get("state") in FINAL_STATES:
                        return
                if received == 0:
                    # Resumed after the job's last event: the stream is empty. Its final state:
                    status = client.status(job_id)
                    if status.get("state") in FINAL_STATES:
                        yield Event(position, "state", status)
                        return
        except (httpx.TransportError, httpx.RemoteProtocolError) as error:
            # Dropped or timed out: reconnect from the last position (below).
            failures += 1
            if failures > 20:
                raise TesseraError(f"the event stream of job {job_id} kept failing: {error}") from error
            time.sleep(min(2.0, 0.1 * failures))
            continue
        # The stream ended without a final state: reconnect from where it stopped.
        time.sleep(0.05)


def _parse(lines: Iterator[str]) -> Iterator[Event]:
    position: Optional[int] = None
    kind, data = "message", []
    for line in lines:
        line = line.rstrip("\r")
        if not line:
            if data:
                yield Event(position, kind, json.loads("\n".join(data)))
            position, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id" and value.isdigit():
            position = int(value)
        elif field == "event":
            kind = value
        elif field == "data":
            data.append(value)


def _polled(client: Client, job_id: str, deadline: Optional[float]) -> Iterator[Event]:
    delivered: set[int] = set()
    first_pending = 0
    console_after = 0
    position = 0
    last_progress: Any = None
    pause = 0.05
    while True:
        _check_deadline(deadline)
        status = client.status(job_id)  # read first: what follows holds everything before it
        news = False
        lines = client.console(job_id, console_after).get("lines", [])
        for line in lines:
            console_after = max(console_after, int(line["seq"]))
            position += 1
            news = True
            yield Event(position, "console", line)
        start: Optional[int] = first_pending
        while start is not None and start < int(status.get("total", 0)):
            page = client.results_page(job_id, start)
            for result in page.get("results", []):
                if result.get("status") in ("ok", "error") and result["slice"] not in delivered:
                    delivered.add(result["slice"])
                    position += 1
                    news = True
                    yield Event(position, "result", result)
            start = page.get("next")
        while first_pending in delivered:
            first_pending += 1
        progress = {key: status.get(key) for key in ("done", "errors", "total", "running")}
        if progress != last_progress:
            last_progress = progress
            position += 1
            yield Event(position, "progress", progress)
        if status.get("state") in FINAL_STATES:
            position += 1
            yield Event(position, "state", status)
            return
        pause = 0.05 if news else min(0.5, pause * 1.5)
        time.sleep(pause)
