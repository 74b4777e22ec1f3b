"""Tessera's Python SDK: deploy Python work to browser volunteers.

    import tessera
    job = tessera.compute_for(range(10), lambda x: x * x)
    print(job.wait())

Scheduler URL and key: arguments, or `TESSERA_SCHEDULER` / `TESSERA_API_KEY`.
"""
from .errors import ConfigurationError, JobFailed, RequestRefused, SliceError, TesseraError
from .executor import Executor
from .job import ConsoleLine, Job, Progress, SliceResult, compute_for
from ._wire import decode, encode



def init(scheduler: "str | None" = None, api_key: "str | None" = None) -> None:
    """Sets the default scheduler and API key (DCP's `dcp.init()`; optional here: without
    arguments it only checks that `TESSERA_SCHEDULER` and a key are configured)."""
    import os

    from ._client import resolve

    url, key = resolve(scheduler, api_key)
    os.environ["TESSERA_SCHEDULER"] = url
    os.environ["TESSERA_API_KEY"] = key


__all__ = [
    "init",
    "compute_for", "Job", "Executor", "SliceResult", "ConsoleLine", "Progress",
    "TesseraError", "SliceError", "JobFailed", "RequestRefused", "ConfigurationError", "encode", "decode",
]
__version__ = "0.1.0"
