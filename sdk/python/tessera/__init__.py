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

__all__ = [
    "compute_for", "Job", "Executor", "SliceResult", "ConsoleLine", "Progress",
    "TesseraError", "SliceError", "JobFailed", "RequestRefused", "ConfigurationError", "encode", "decode",
]
__version__ = "0.1.0"
