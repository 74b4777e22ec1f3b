"""HTTP access to a scheduler's deployer endpoints (docs/PROTOCOL.md)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import httpx

from .errors import ConfigurationError, RequestRefused, TesseraError


def _credentials_file() -> Path:
    if os.environ.get("TESSERA_CONFIG_DIR"):
        return Path(os.environ["TESSERA_CONFIG_DIR"]) / "credentials"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tessera" / "credentials"


def resolve(scheduler: Optional[str], api_key: Optional[str]) -> tuple[str, str]:
    """The scheduler URL and API key: arguments, else `TESSERA_SCHEDULER`/`TESSERA_API_KEY`,
    else (the key only) the CLI's credentials file line for that URL."""
    url = scheduler or os.environ.get("TESSERA_SCHEDULER")
    if not url:
        raise ConfigurationError("no scheduler: pass scheduler='http://host:port' or set TESSERA_SCHEDULER")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"scheduler {url!r} is not an http:// or https:// URL")
    url = url.rstrip("/")
    key = api_key or os.environ.get("TESSERA_API_KEY")
    credentials = _credentials_file()
    if not key and credentials.is_file():
        for line in credentials.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].rstrip("/") == url:
                key = parts[1]
    if not key:
        raise ConfigurationError(
            f"no API key for {url}: pass api_key=..., set TESSERA_API_KEY, or save one in {credentials}"
        )
    return url, key


class Client:
    """One scheduler and key; raises `RequestRefused` for protocol errors."""

    def __init__(self, scheduler: Optional[str] = None, api_key: Optional[str] = None, timeout: float = 60.0):
        self.url, self.api_key = resolve(scheduler, api_key)
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=timeout
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise TesseraError(f"{method} {self.url}{path}: {error}") from error
        raise_for_refusal(response)
        return response.json()

    def deploy(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/v1/jobs", json=body)

    def upload_bundle(self, tar_gz: bytes) -> str:
        answer = self.request("PUT", "/v1/bundles", content=tar_gz, headers={"Content-Type": "application/gzip"})
        return answer["sha256"]

    def status(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def results_page(self, job_id: str, start: int, limit: int = 10_000) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}/results", params={"from": start, "limit": limit})

    def console(self, job_id: str, after: int) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}/console", params={"after": after})

    def add_slices_page(self, job_id: str, page: bytes) -> dict[str, Any]:
        """Sends one page, the JSON text `{"slices": [...]}`; answers `{"first", "total"}`."""
        return self.request("POST", f"/v1/jobs/{job_id}/slices", content=page,
                            headers={"Content-Type": "application/json"})

    def close_job(self, job_id: str) -> dict[str, Any]:
        """Closes an open job (no more slices); answers with its status."""
        return self.request("POST", f"/v1/jobs/{job_id}/close", json={})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel", json={})

    def close(self) -> None:
        self.http.close()


def raise_for_refusal(response: httpx.Response) -> None:
    """Raises `RequestRefused` with the protocol's error body for a 4xx/5xx answer."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    raise RequestRefused(
        response.status_code,
        str(body.get("code") or "http_error"),
        str(body.get("message") or response.text or response.reason_phrase),
        body.get("field"),
    )
