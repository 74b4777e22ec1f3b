"""Exceptions of the Tessera SDK; every one is a `TesseraError`."""
from __future__ import annotations

from typing import Any, Optional


class TesseraError(Exception):
    """Base class of every error the SDK raises."""


class ConfigurationError(TesseraError):
    """The scheduler URL or API key is missing or malformed."""


class RequestRefused(TesseraError):
    """The scheduler refused a request: the protocol's `code`, `field` and `message`."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None):
        self.status = status
        self.code = code
        self.field = field
        self.message = message
        where = f" (field `{field}`)" if field else ""
        super().__init__(f"scheduler refused the request: {status} {code}{where}: {message}")


class SliceError(TesseraError):
    """A slice raised: its number, the job id, the error line and the sandbox's traceback."""

    def __init__(self, job_id: Optional[str], slice: int, message: str, traceback: Optional[str] = None):
        self.job_id = job_id
        self.slice = slice
        self.message = message
        self.traceback = traceback or ""
        text = f"slice {slice} of job {job_id} failed: {message}"
        if self.traceback:
            text += "\n" + self.traceback
        super().__init__(text)


class JobFailed(TesseraError):
    """The job ended without results for every slice: failed (its set-up error) or cancelled."""

    def __init__(self, job_id: Optional[str], state: str, message: str = "", status: Optional[dict[str, Any]] = None):
        self.job_id = job_id
        self.state = state
        self.message = message
        self.status = status or {}
        super().__init__(f"job {job_id} ended {state}" + (f": {message}" if message else ""))
