"""`tessera.Executor`: the standard library's `concurrent.futures.Executor` on Tessera."""
from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from .job import Job


class Executor(concurrent.futures.Executor):
    """Runs calls on Tessera's volunteers: each `map` is one job (one slice per item), each
    `submit` a job of one slice. Options apply to every job it deploys."""

    def __init__(
        self,
        scheduler: Optional[str] = None,
        api_key: Optional[str] = None,
        packages: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        bundle: Optional[str] = None,
        slice_timeout: Optional[float] = None,
    ):
        self._options = dict(scheduler=scheduler, api_key=api_key, packages=packages, env=env, bundle=bundle,
                             slice_timeout=slice_timeout)
        self._lock = threading.Lock()
        self._shutdown = False
        self._pending: dict[concurrent.futures.Future, Job] = {}
        self._threads: list[threading.Thread] = []

    def _job(self, data: Iterable[Any], fn: Callable[..., Any], args: Sequence[Any] = (),
             kwargs: Optional[Mapping[str, Any]] = None, star: bool = False) -> Job:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
        return Job(data, fn, args, kwargs=kwargs, star=star, **self._options)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Deploys `fn(*args, **kwargs)` as a one-slice job; the Future holds its result."""
        job = self._job([list(args)], fn, kwargs=kwargs, star=True)
        job.exec()
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._pending[future] = job

        def follow() -> None:
            try:
                future.set_result(job.wait()[0])
            except BaseException as error:  # noqa: BLE001 - handed to the Future
                future.set_exception(error)
            finally:
                with self._lock:
                    self._pending.pop(future, None)

        thread = threading.Thread(target=follow, name=f"tessera-{job.job_id}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Deploys one job at once for `fn` over the items (zipped, like the builtin `map`);
        yields results in order as they arrive. A failing slice raises its `SliceError`."""
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        if len(iterables) == 1:
            job = self._job(iterables[0], fn)
        else:
            job = self._job([list(items) for items in zip(*iterables)], fn, star=True)
        job.exec()
        return job.results(ordered=True, timeout=timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; with `cancel_futures`, cancels the jobs of unfinished submits; with
        `wait`, returns once every submitted future is done."""
        with self._lock:
            self._shutdown = True
            pending = list(self._pending.values())
        if cancel_futures:
            for job in pending:
                job.cancel()
        if wait:
            for thread in self._threads:
                thread.join()
