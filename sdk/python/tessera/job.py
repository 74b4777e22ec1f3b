"""Jobs: `compute_for` builds one, `Job.exec` deploys it, `wait`/`results`/`on` follow it."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

from . import _program
from ._client import Client
from ._events import FINAL_STATES, job_events
from ._wire import decode, encode, holds_numpy
from .errors import JobFailed, SliceError, TesseraError

EVENTS = ("result", "error", "console", "progress", "complete")
_EVENT_ALIASES = {"status": "progress"}  # DCP's name for progress
Work = Union[Callable[..., Any], str, os.PathLike]

PAGE_SLICES = 10_000
"""`add_slices` sends at most this many slices in one page…"""
PAGE_BYTES = 4 * 1024 * 1024
"""…and at most this many bytes of encoded slices (the scheduler takes pages of up to 16 MiB)."""
_MAX_PAGE_BYTES = 16 * 1024 * 1024 - 64  # the scheduler's page limit, less the `{"slices":[…]}` frame


@dataclass
class SliceResult:
    """The `result` event: a slice's number and its value."""

    slice: int
    value: Any

    @property
    def result(self) -> Any:
        """The value (DCP's name)."""
        return self.value

    @property
    def sliceNumber(self) -> int:  # noqa: N802 - DCP's name
        """The slice number (DCP's name)."""
        return self.slice


@dataclass
class ConsoleLine:
    """The `console` event: a line the program printed (`slice` is None during set-up)."""

    slice: Optional[int]
    stream: str
    text: str


@dataclass
class Progress:
    """The `progress` event: counts and the progress of running slices."""

    done: int
    errors: int
    total: int
    running: list


def compute_for(
    data: Optional[Iterable[Any]],
    work: Work,
    args: Sequence[Any] = (),
    packages: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
    bundle: Union[str, os.PathLike, None] = None,
    name: Optional[str] = None,
    scheduler: Optional[str] = None,
    api_key: Optional[str] = None,
    slice_timeout: Optional[float] = None,
    open: bool = False,
) -> "Job":
    """A job (not yet deployed: call `exec`, or `wait`, which deploys it) that runs `work` on each
    element of `data`.

    `work` is a Python function, called as `work(datum, *args)`, or the path or source of a
    DCP-style program that calls `dcp.set_slice_handler` (then `args` are its `sys.argv[1:]`).
    A `range` is deployed as a range. `slice_timeout` is in seconds.

    A closed job (the default) encodes all of `data` when it is built and sends it in the one
    deploy request, so `data` must fit in memory (and the scheduler's deploy body limit). For
    inputs of any size, use an open job: with `open=True` the job is deployed open, `data` (may
    be None) is streamed to it in pages at `exec`, more slices are added with `job.add_slices`,
    and `job.close()` says there are no more; `wait` returns once it is closed and every slice
    is done. An open job's packages are fixed at deploy: pass `packages=["numpy"]` when its
    slices will hold numpy values.
    """
    return Job(data, work, args, packages=packages, env=env, bundle=bundle, name=name,
               scheduler=scheduler, api_key=api_key, slice_timeout=slice_timeout, open=open)


def _bundle_bytes(bundle: Union[str, os.PathLike]) -> bytes:
    path = Path(bundle)
    if path.is_dir():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for entry in sorted(path.rglob("*")):
                relative = entry.relative_to(path).as_posix()
                if entry.is_symlink():
                    raise ValueError(f"bundle {path}: {relative} is a symbolic link; bundles hold regular files and folders only")
                if "__pycache__" in entry.parts:
                    continue
                archive.add(entry, arcname=relative, recursive=False)
        return buffer.getvalue()
    if path.is_file() and (path.name.endswith(".tar.gz") or path.name.endswith(".tgz")):
        return path.read_bytes()
    raise ValueError(f"bundle {bundle!s} is neither a folder nor a .tar.gz file")


def _call_spec(args: Sequence[Any], kwargs: Mapping[str, Any], star: bool) -> dict:
    return {"args": encode(list(args), "args"), "kwargs": encode(dict(kwargs), "kwargs"), "star": star}


class Job:
    """A Tessera job: built by `compute_for`, deployed by `exec`, followed by `wait`/`results`/`on`.

    Before `exec`, `env` (dict), `packages` (alias `modules`, list), `name`, `args` and
    `slice_timeout` may be changed, as in DCP's SDK.

    An open job (`open=True`) takes slices with `add_slices` and ends after `close`; `total` is
    then the number of slices added so far, final once the job has ended.
    """

    def __init__(
        self,
        data: Optional[Iterable[Any]],
        work: Optional[Work],
        args: Sequence[Any] = (),
        *,
        packages: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        bundle: Union[str, os.PathLike, None] = None,
        name: Optional[str] = None,
        scheduler: Optional[str] = None,
        api_key: Optional[str] = None,
        slice_timeout: Optional[float] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        star: bool = False,
        open: bool = False,
    ):
        self.args = list(args)
        self.kwargs = dict(kwargs or {})
        self.env: dict[str, str] = dict(env or {})
        self.packages: list[str] = list(packages)
        self.bundle = bundle
        self.name = name
        self.slice_timeout = slice_timeout
        self.job_id: Optional[str] = None
        self._scheduler, self._api_key = scheduler, api_key
        self._client: Optional[Client] = None
        self._star = star
        self._callbacks: dict[str, list[Callable[[Any], Any]]] = {event: [] for event in EVENTS}
        self._results: dict[int, tuple[str, Any]] = {}
        self._position = 0
        self._final: Optional[dict[str, Any]] = None
        self.total: Optional[int] = None
        self.open = open
        self._was_open = open
        self._pending: Optional[Iterable[Any]] = None  # an open job's data, streamed at `exec`
        self._deployed_packages: Optional[list[str]] = None
        if open:
            self._range, self._slices = None, []
            self._pending = data
            self.total = 0
        elif data is None:
            self._range: Optional[range] = None
            self._slices: list[Any] = []
        elif isinstance(data, range) and data.step > 0 and len(data) > 0:
            self._range, self._slices = data, []
            self.total = len(data)
        else:
            self._range = None
            self._slices = [encode(item, f"data[{index}]") for index, item in enumerate(data)]
            self.total = len(self._slices)
        self._function = None
        self.program: Optional[str] = None
        self.program_name = _program.PROGRAM_NAME
        if work is None:
            pass
        elif callable(work):
            self._function = work
            self.program = _program.function_program(work)
            name = name or getattr(work, "__name__", None)
        elif isinstance(work, (str, os.PathLike)):
            text = os.fspath(work)
            if "\n" not in text and os.path.isfile(text):
                self.program = Path(text).read_text()
                self.program_name = os.path.basename(text)
            elif "set_slice_handler" in text:
                self.program = text
                self.program_name = "main.py"
            else:
                raise ValueError(
                    f"work {text[:80]!r} is neither a program file nor program source that calls dcp.set_slice_handler"
                )
        else:
            raise TypeError(f"work must be a function, a program path or program source; got {type(work).__name__}")
        if self.name is None and self._function is not None and self._function.__name__ != "<lambda>":
            self.name = self._function.__name__

    # DCP's name for the packages list.
    @property
    def modules(self) -> list[str]:
        """The Pyodide packages to load (DCP's `job.modules`); the same list as `packages`."""
        return self.packages

    @modules.setter
    def modules(self, value: Sequence[str]) -> None:
        self.packages = list(value)

    @classmethod
    def attach(cls, job_id: str, scheduler: Optional[str] = None, api_key: Optional[str] = None) -> "Job":
        """A deployed job, to follow (`wait`, `results`, `on`, `status`, `cancel`)."""
        job = cls(None, None, scheduler=scheduler, api_key=api_key)
        job.job_id = job_id
        status = job.status()
        job.total = int(status["total"])
        job.open = job._was_open = bool(status.get("open"))
        return job

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self._scheduler, self._api_key)
        return self._client

    def on(self, event: str, callback: Callable[[Any], Any]) -> "Job":
        """Calls `callback` for each `event` — result (`SliceResult`), error (`SliceError` or
        `JobFailed`), console (`ConsoleLine`), progress (`Progress`), complete (the final status) —
        while `wait` or `results` follows the job."""
        event = _EVENT_ALIASES.get(event, event)
        if event not in self._callbacks:
            raise ValueError(f"unknown event {event!r}; use one of {', '.join(EVENTS)}")
        self._callbacks[event].append(callback)
        return self

    def _arguments(self) -> list[Any]:
        if self._function is not None:
            return [json.dumps(_call_spec(self.args, self.kwargs, self._star))]
        return [encode(arg, f"args[{index}]") for index, arg in enumerate(self.args)]

    def deploy_body(self) -> dict[str, Any]:
        """The `POST /v1/jobs` body this job deploys with (without the bundle's hash)."""
        if self.program is None:
            raise TesseraError("an attached job cannot be deployed again")
        arguments = self._arguments()
        packages = list(dict.fromkeys(self.packages))
        needs_numpy = holds_numpy(self._slices) or holds_numpy(
            [_call_spec(self.args, self.kwargs, False)] if self._function else arguments
        )
        if needs_numpy and "numpy" not in packages:
            packages.append("numpy")
        body: dict[str, Any] = {"worktime": "pyodide", "program": self.program, "program_name": self.program_name,
                                "arguments": arguments, "env": dict(self.env), "packages": packages}
        if self.name:
            body["name"] = self.name
        if self.open:
            body["open"] = True
        elif self._range is not None:
            body["range"] = {"start": self._range.start, "end": self._range.stop, "step": self._range.step}
        else:
            body["slices"] = self._slices
        if self.slice_timeout is not None:
            body["slice_timeout_ms"] = int(self.slice_timeout * 1000)
        return body

    def exec(self) -> str:
        """Deploys the job; returns its id. An open job's `data`, if any, is then streamed to it
        with `add_slices` (the job stays open)."""
        if self.job_id is not None:
            raise TesseraError(f"job {self.job_id} is already deployed")
        body = self.deploy_body()
        if self.bundle is not None:
            body["bundle"] = self.client.upload_bundle(_bundle_bytes(self.bundle))
        answer = self.client.deploy(body)
        self.job_id = answer["job_id"]
        self.total = int(answer["total"])
        if isinstance(answer.get("packages"), list):
            self._deployed_packages = [str(package) for package in answer["packages"]]
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.add_slices(pending)
        return self.job_id

    def add_slices(self, data: Iterable[Any], page_slices: int = PAGE_SLICES, page_bytes: int = PAGE_BYTES) -> range:
        """Adds a slice per element of `data` (any iterable, e.g. a generator of any length) to
        this open job, deploying it first if needed; returns the slice numbers added.

        Elements are encoded as they are read (the wire encoding of `tessera.encode`, numpy
        included) and sent in pages of at most `page_slices` slices and `page_bytes` encoded
        bytes, each committed by the scheduler before the next is read, so memory stays bounded
        by one page whatever the length of `data`. Workers start on the first page at once. The
        returned range is contiguous unless someone else adds to the job at the same time.
        The scheduler refuses pages for a job that is not open (never was, or was closed) or not
        running: `RequestRefused` with field `slices` names why; pages sent before stay added.
        An element that cannot be encoded raises (naming it, `data[i]`) before its page is sent,
        and so does a numpy value when the job was deployed without the numpy package.
        """
        if page_slices < 1 or page_bytes < 1:
            raise ValueError(f"page_slices ({page_slices}) and page_bytes ({page_bytes}) must be positive")
        if self.job_id is None:
            if not self.open:
                raise TesseraError("add_slices needs an open job: build it with compute_for(..., open=True)")
            self.exec()
        job_id = self._deployed()
        page_bytes = min(page_bytes, _MAX_PAGE_BYTES)
        check_numpy = self._deployed_packages is not None and "numpy" not in self._deployed_packages
        first: Optional[int] = None
        end = self.total or 0
        parts: list[str] = []
        size = 0

        def send() -> None:
            nonlocal first, end, size
            page = ('{"slices":[' + ",".join(parts) + "]}").encode("ascii")
            answer = self.client.add_slices_page(job_id, page)
            page_first, total = int(answer["first"]), int(answer["total"])
            if first is None:
                first = page_first
            end = page_first + len(parts)
            self.total = max(self.total or 0, total)
            parts.clear()
            size = 0

        for position, item in enumerate(data):
            path = f"data[{position}]"
            value = encode(item, path)
            if check_numpy and holds_numpy(value):
                raise TesseraError(
                    f"{path} holds a numpy value, but job {job_id} was deployed without the numpy package: "
                    "pass packages=['numpy'] to compute_for"
                )
            try:
                text = json.dumps(value, separators=(",", ":"), allow_nan=False)
            except ValueError as error:
                raise ValueError(f"{path}: {error} (NaN and infinities cannot be sent as JSON)") from error
            if len(text) > _MAX_PAGE_BYTES:
                raise ValueError(f"{path} encodes to {len(text)} bytes; a slice must fit a 16 MiB page")
            if parts and (len(parts) >= page_slices or size + len(text) + 1 > page_bytes):
                send()
            parts.append(text)
            size += len(text) + 1
        if parts:
            send()
        return range(end, end) if first is None else range(first, end)

    def close(self) -> dict[str, Any]:
        """Closes this open job: no more slices. It completes once every slice has its outcome
        (at once if they all have). Answers with its status; closing a job that is not open
        changes nothing."""
        status = self.client.close_job(self._deployed())
        self.open = False
        self.total = int(status.get("total", self.total or 0))
        return status

    def status(self) -> dict[str, Any]:
        """The job's status (`GET /v1/jobs/{id}`): state, counts, running slices."""
        return self.client.status(self._deployed())

    def cancel(self) -> dict[str, Any]:
        """Cancels the job; answers with its status."""
        return self.client.cancel(self._deployed())

    def _deployed(self) -> str:
        if self.job_id is None:
            raise TesseraError("the job is not deployed yet: call exec() first")
        return self.job_id

    def _emit(self, event: str, value: Any) -> None:
        for callback in self._callbacks[event]:
            callback(value)

    def _record(self, data: dict[str, Any]) -> Optional[int]:
        index = int(data["slice"])
        if index in self._results:
            return None
        if data.get("status") == "ok":
            value = decode(data.get("value"))
            self._results[index] = ("ok", value)
            self._emit("result", SliceResult(index, value))
        else:
            error = SliceError(self.job_id, index, str(data.get("error", "")), data.get("stack"))
            self._results[index] = ("error", error)
            self._emit("error", error)
        return index

    def _pump(self, deadline: Optional[float]) -> Iterator[int]:
        """Follows the job's events from the last position; yields each new slice number."""
        if self._final is not None:
            return
        for event in job_events(self.client, self._deployed(), self._position, deadline):
            if event.position is not None:
                self._position = max(self._position, event.position)
            if event.kind == "result":
                index = self._record(event.data)
                if index is not None:
                    yield index
            elif event.kind == "console":
                data = event.data
                self._emit("console", ConsoleLine(data.get("slice"), data.get("stream", "stdout"), data.get("text", "")))
            elif event.kind == "progress":
                data = event.data
                if data.get("total") is not None:
                    self.total = max(self.total or 0, int(data["total"]))
                self._emit("progress", Progress(int(data.get("done") or 0), int(data.get("errors") or 0),
                                                int(data.get("total") or self.total or 0), list(data.get("running") or [])))
            elif event.kind == "state" and event.data.get("state") in FINAL_STATES:
                self._final = event.data
                if event.data.get("total") is not None:
                    self.total = int(event.data["total"])
                self.open = False
                state = event.data["state"]
                if state in ("complete", "complete_with_errors"):
                    self._emit("complete", event.data)
                else:
                    self._emit("error", self._failure())
                return

    def _known_total(self) -> Optional[int]:
        """The number of slices once it can no longer grow: none while the job is open (the final
        state and `close` both end that)."""
        return None if self.open else self.total

    def _failure(self) -> JobFailed:
        final = self._final or {}
        return JobFailed(self.job_id, str(final.get("state")), str(final.get("error") or ""), final)

    def results(self, ordered: bool = True, with_index: bool = False, timeout: Optional[float] = None) -> Iterator[Any]:
        """Yields results as they arrive: in slice order (`ordered=True`) or as slices complete.
        With `with_index`, yields `(slice, value)` pairs. A slice error raises `SliceError` where
        it would have been yielded; a failed or cancelled job raises `JobFailed`."""
        if self.job_id is None:
            self.exec()
        deadline = None if timeout is None else time.monotonic() + timeout
        pump = self._pump(deadline)

        def give(index: int) -> Any:
            outcome, value = self._results[index]
            if outcome == "error":
                raise value
            return (index, value) if with_index else value

        def finished(index: int) -> bool:
            known = self._known_total()
            return known is not None and index >= known

        if ordered:
            next_index = 0
            while not finished(next_index):
                if next_index in self._results:
                    yield give(next_index)
                    next_index += 1
                    continue
                if next(pump, None) is None:
                    if next_index in self._results or finished(next_index):
                        continue
                    raise self._failure()
            for _ in pump:  # on to the final state: its events (complete, console) fire too
                pass
        else:
            given = set()
            for index in sorted(self._results):
                given.add(index)
                yield give(index)
            for index in pump:
                if index not in given:
                    given.add(index)
                    yield give(index)
            if len(given) < (self.total or 0):
                for index in sorted(set(self._results) - given):
                    yield give(index)
                if len(self._results) < (self.total or 0):
                    raise self._failure()

    def wait(self, timeout: Optional[float] = None, progress: Optional[bool] = None) -> list[Any]:
        """Deploys the job if needed and returns every result in slice order; raises `SliceError`
        for the first failing slice and `JobFailed` for a failed or cancelled job. An open job's
        wait returns once it is closed (by `close`, here or elsewhere) and every slice is done. `progress`
        shows a tqdm bar (default: when tqdm is installed and stderr is a terminal)."""
        bar = None
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            try:
                from tqdm import tqdm  # type: ignore[import-not-found]
            except ImportError:
                tqdm = None
            if tqdm is not None:
                if self.job_id is None:
                    self.exec()
                bar = tqdm(total=self.total, desc=self.name or self.job_id, unit="slice")
                self.on("result", lambda _: bar.update(1)).on("error", lambda _: bar.update(1))
        try:
            return list(self.results(ordered=True, timeout=timeout))
        finally:
            if bar is not None:
                bar.close()

    def local_exec(self, python: Optional[str] = None, data: Optional[Iterable[Any]] = None) -> list[Any]:
        """Runs the job in local CPython (`python`, default this interpreter) as a sandbox would:
        the same `dcp` module, `sys.argv`, `os.environ` and bundle as working directory. Returns
        the results in slice order or raises like `wait`. Fires the same events but progress.

        `data` replaces the job's slices. An open job does not keep the slices it streams to the
        scheduler, so it runs its `data` if it has not been deployed yet (which consumes a
        generator), and otherwise needs `data`."""
        if self.program is None:
            raise TesseraError("an attached job has no program to run locally")
        if data is not None:
            slices = [encode(item, f"data[{index}]") for index, item in enumerate(data)]
        elif self.open and self._pending is not None:
            pending, self._pending = self._pending, None
            slices = [encode(item, f"data[{index}]") for index, item in enumerate(pending)]
            self._pending = slices  # `encode` leaves wire values as they are: exec sends the same
        elif self.open or self._was_open:
            raise TesseraError(
                f"job {self.job_id or '(open)'} is open and keeps no copy of its slices: pass them as local_exec(data=...)"
            )
        else:
            slices = [encode(i) for i in self._range] if self._range is not None else self._slices
        with tempfile.TemporaryDirectory(prefix="tessera-local-") as workdir:
            root = os.path.join(workdir, "job")
            os.makedirs(root)
            if self.bundle is not None:
                with tarfile.open(fileobj=io.BytesIO(_bundle_bytes(self.bundle)), mode="r:gz") as archive:
                    for member in archive.getmembers():
                        if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in member.name.split("/"):
                            raise ValueError(f"bundle entry {member.name!r} is not a plain file or folder inside the bundle")
                    archive.extractall(root)
            spec_path, out_path = os.path.join(workdir, "spec.json"), os.path.join(workdir, "out.jsonl")
            with open(spec_path, "w") as file:
                json.dump({"program": self.program, "program_name": self.program_name,
                           "arguments": self._arguments(), "env": self.env, "root": root, "slices": slices}, file)
            package_parent = str(Path(__file__).resolve().parent.parent)
            environment = dict(os.environ)
            environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, environment.get("PYTHONPATH")]))
            subprocess.run([python or sys.executable, "-m", "tessera._local_runner", spec_path, out_path],
                           env=environment, check=True, cwd=root)
            with open(out_path) as file:
                lines = [json.loads(line) for line in file if line.strip()]
        results: list[Any] = []
        for line in lines:
            if "setup_error" in line:
                failure = JobFailed(None, "failed", line["setup_error"] + "\n" + line.get("stack", ""))
                self._emit("error", failure)
                raise failure
            index = int(line["slice"])
            if line["status"] == "ok":
                value = decode(line["value"])
                self._emit("result", SliceResult(index, value))
                results.append(value)
            else:
                error = SliceError(None, index, line["error"], line.get("stack"))
                self._emit("error", error)
                raise error
        self._emit("complete", {"state": "complete", "total": len(results), "done": len(results), "errors": 0})
        return results
