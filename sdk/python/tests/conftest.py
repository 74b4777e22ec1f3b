"""One real scheduler (`tessera serve`) and one real headless browser worker (`tessera worker`)
for the whole session, started the way the Rust end-to-end harness starts them
(tests/src/lib.rs), and stopped by PID — with the worker's browser — on every exit path."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[3]


def tessera_bin() -> str:
    path = Path(os.environ.get("TESSERA_BIN") or REPO / "target" / "release" / "tessera")
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: run `make build` or set TESSERA_BIN")
    return str(path)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> dict[int, str]:
    """PID → start time of every process below `root`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            start = _start_time(child)
            if start is not None:
                found[child] = start
                stack.append(child)
    return found


def _stop(process: subprocess.Popen, seen: dict[int, str]) -> None:
    """SIGINT (a worker closes its browser), then SIGKILL for the process and whatever of its
    tree is still the same process."""
    seen.update(_descendants(process.pid))
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid, start in seen.items():
        if _start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Cluster:
    """The session's scheduler URL, admin key and temporary folder."""

    def __init__(self, url: str, api_key: str, directory: Path):
        self.url = url
        self.api_key = api_key
        self.directory = directory


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    binary = tessera_bin()
    with tempfile.TemporaryDirectory(prefix="tessera-sdk-tests-") as temp:
        directory = Path(temp)
        log_path = directory / "serve.log"
        environment = dict(os.environ, RUST_LOG="warn", TESSERA_CONFIG_DIR=str(directory))
        with open(log_path, "ab") as log:
            serve = subprocess.Popen(
                [binary, "serve", "--addr", "127.0.0.1:0", "--db", str(directory / "sdk.db")],
                env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            )
        worker = None
        seen: dict[int, str] = {}
        try:
            line = serve.stdout.readline().decode()
            url = line.split()[-1] if line.strip() else ""
            if not line.startswith("tessera scheduler listening on ") or not url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"tessera serve did not start: {line!r}\n{log_path.read_text()}")
            keys = [l.split("=", 1)[1] for l in log_path.read_text().splitlines() if l.startswith("TESSERA_API_KEY=")]
            if not keys:
                raise RuntimeError(f"tessera serve printed no TESSERA_API_KEY line:\n{log_path.read_text()}")
            worker_log = open(directory / "worker.log", "ab")
            worker = subprocess.Popen(
                [binary, "worker", "--scheduler", url, "--cores", "2"],
                env=dict(os.environ, RUST_LOG="warn"), stdin=subprocess.DEVNULL, stdout=worker_log, stderr=worker_log,
            )
            worker_log.close()
            os.environ["TESSERA_SCHEDULER"] = url
            os.environ["TESSERA_API_KEY"] = keys[0]
            yield Cluster(url, keys[0], directory)
        finally:
            if worker is not None:
                _stop(worker, seen)
            _stop(serve, {})
            serve.stdout.close()
