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
    data: Iterable[Any],
    work: Work,
    args: Sequence[Any] = (),
    packages: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
    bundle: Union[str, os.PathLike, None] = None,
    name: Optional[str] = None,
    scheduler: Optional[str] = None,
    api_key: Optional[str] = None,
    slice_timeout: Optional[float] = None,
) -> "Job":
    """A job (not yet deployed: call `exec`, or `wait`, which deploys it) that runs `work` on each
    element of `data`.

    `work` is a Python function, called as `work(datum, *args)`, or the path or source of a
    DCP-style program that calls `dcp.set_slice_handler` (then `args` are its `sys.argv[1:]`).
    A `range` is deployed as a range. `slice_timeout` is in seconds.
    """
    return Job(data, work, args, packages=packages, env=env, bundle=bundle, name=name,
               scheduler=scheduler, api_key=api_key, slice_timeout=slice_timeout)


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
        if data is None:
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
        job.total = int(job.status()["total"])
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
        if self._range is not None:
            body["range"] = {"start": self._range.start, "end": self._range.stop, "step": self._range.step}
        else:
            body["slices"] = self._slices
        if self.slice_timeout is not None:
            body["slice_timeout_ms"] = int(self.slice_timeout * 1000)
        return body

    def exec(self) -> str:
        """Deploys the job; returns its id."""
        if self.job_id is not None:
            raise TesseraError(f"job {self.job_id} is already deployed")
        body = self.deploy_body()
        if self.bundle is not None:
            body["bundle"] = self.client.upload_bundle(_bundle_bytes(self.bundle))
        answer = self.client.deploy(body)
        self.job_id = answer["job_id"]
        self.total = int(answer["total"])
        return self.job_id

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
                self._emit("progress", Progress(int(data.get("done") or 0), int(data.get("errors") or 0),
                                                int(data.get("total") or self.total or 0), list(data.get("running") or [])))
            elif event.kind == "state" and event.data.get("state") in FINAL_STATES:
                self._final = event.data
                state = event.data["state"]
                if state in ("complete", "complete_with_errors"):
                    self._emit("complete", event.data)
                else:
                    self._emit("error", self._failure())
                return

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

        if ordered:
            next_index = 0
            while self.total is None or next_index < self.total:
                if next_index in self._results:
                    yield give(next_index)
                    next_index += 1
                    continue
                if next(pump, None) is None:
                    if next_index in self._results:
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
        for the first failing slice and `JobFailed` for a failed or cancelled job. `progress`
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

    def local_exec(self, python: Optional[str] = None) -> list[Any]:
        """Runs the job in local CPython (`python`, default this interpreter) as a sandbox would:
        the same `dcp` module, `sys.argv`, `os.environ` and bundle as working directory. Returns
        the results in slice order or raises like `wait`. Fires the same events but progress."""
        if self.program is None:
            raise TesseraError("an attached job has no program to run locally")
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
