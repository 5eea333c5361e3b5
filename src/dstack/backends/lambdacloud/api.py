"""A small client of the Lambda Cloud public API (v1), within its documented rate limits:
1 request per second, and launches at most 1 per 12 s and 5 per minute. A 429 is retried
with exponential backoff. Errors are branched on their `code`, never on their message.

DSTACK_LAMBDA_RATE_SCALE (default 1) scales every interval: set it below 1 only against a
test double of the API.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any

import httpx

DEFAULT_BASE_URL = "https://cloud.lambda.ai"


class LambdaAPIError(Exception):
    def __init__(self, status: int, code: str, message: str, suggestion: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.suggestion = status, code, message, suggestion


class _RateLimiter:
    """Spaces requests `interval` apart and keeps at most `burst` in any `window`."""

    def __init__(self, interval: float, burst: int | None = None, window: float = 0.0) -> None:
        self.interval, self.burst, self.window = interval, burst, window
        self._last = 0.0
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            delay = max(0.0, self._last + self.interval - now)
            if self.burst:
                while self._recent and self._recent[0] <= now - self.window:
                    self._recent.popleft()
                if len(self._recent) >= self.burst:
                    delay = max(delay, self._recent[0] + self.window - now)
            if delay:
                time.sleep(delay)
            self._last = time.monotonic()
            self._recent.append(self._last)


_LIMITERS: dict[tuple[str, str], tuple[_RateLimiter, _RateLimiter]] = {}
_LIMITERS_LOCK = threading.Lock()


def _limiters(base_url: str, api_key: str) -> tuple[_RateLimiter, _RateLimiter]:
    """One pair per account, shared by every project using it (limits are per API key)."""
    scale = float(os.environ.get("DSTACK_LAMBDA_RATE_SCALE", "1"))
    with _LIMITERS_LOCK:
        key = (base_url, api_key)
        if key not in _LIMITERS:
            _LIMITERS[key] = (_RateLimiter(1.0 * scale), _RateLimiter(12.0 * scale, burst=5, window=60.0 * scale))
        return _LIMITERS[key]


class LambdaAPI:
    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, *, max_retries: int = 6) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=60,
                                  headers={"Authorization": f"Bearer {api_key}"})
        self._general, self._launches = _limiters(self.base_url, api_key)
        self._max_retries = max_retries
        self._scale = float(os.environ.get("DSTACK_LAMBDA_RATE_SCALE", "1"))

    def _request(self, method: str, path: str, *, launch: bool = False, **kwargs: Any) -> Any:
        for attempt in range(self._max_retries + 1):
            if launch:
                self._launches.wait()
            self._general.wait()
            try:
                response = self._http.request(method, f"/api/v1{path}", **kwargs)
            except httpx.HTTPError as exc:
                if attempt == self._max_retries:
                    raise LambdaAPIError(0, "network", f"cannot reach {self.base_url}: {exc}") from exc
                time.sleep(min(30.0, 2**attempt) * self._scale)
                continue
            if response.status_code == 429 and attempt < self._max_retries:
                retry_after = float(response.headers.get("Retry-After") or 0)
                time.sleep(max(retry_after, min(30.0, 2**attempt)) * self._scale)
                continue
            body = _json(response)
            if response.status_code >= 400:
                error = body.get("error") if isinstance(body, dict) else None
                if not isinstance(error, dict):
                    error = {"code": f"http/{response.status_code}", "message": response.text[:200]}
                raise LambdaAPIError(response.status_code, str(error.get("code")), str(error.get("message")),
                                     error.get("suggestion"))
            return body["data"]
        raise LambdaAPIError(429, "global/rate-limited", "still rate-limited after retries")

    def instance_types(self) -> dict[str, Any]:
        return self._request("GET", "/instance-types")

    def instances(self) -> list[dict[str, Any]]:
        return self._request("GET", "/instances")

    def instance(self, instance_id: str) -> dict[str, Any]:
        return self._request("GET", f"/instances/{instance_id}")

    def launch(self, **request: Any) -> list[str]:
        return self._request("POST", "/instance-operations/launch", json=request, launch=True)["instance_ids"]

    def terminate(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        return self._request("POST", "/instance-operations/terminate",
                             json={"instance_ids": instance_ids})["terminated_instances"]

    def file_systems(self) -> list[dict[str, Any]]:
        return self._request("GET", "/file-systems")

    def create_file_system(self, *, name: str, region: str) -> dict[str, Any]:
        return self._request("POST", "/filesystems", json={"name": name, "region": region})

    def delete_file_system(self, file_system_id: str) -> None:
        self._request("DELETE", f"/filesystems/{file_system_id}")

    def ssh_keys(self) -> list[dict[str, Any]]:
        return self._request("GET", "/ssh-keys")

    def add_ssh_key(self, name: str, public_key: str) -> dict[str, Any]:
        return self._request("POST", "/ssh-keys", json={"name": name, "public_key": public_key})


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}
