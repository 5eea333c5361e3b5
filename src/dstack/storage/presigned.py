"""A bucket reached through presigned requests only: the agent on an instance that must hold no
cloud keys (Lambda Cloud). Its access file lists presigned GET URLs for the few objects it reads
and one presigned POST policy that allows uploads under its own job prefix, until they expire.

The access file is re-read when it changes, so the server can renew access for long jobs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dstack.storage.base import Storage
from dstack.storage.sigv4 import with_retries

# S3's answers worth another try: throttling, timeouts and server errors (an expired or refused URL is not).
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class PresignedStorage(Storage):
    def __init__(self, access_file: str | Path) -> None:
        self.path = Path(access_file)
        self.url = f"presigned://{self.path}"
        self._mtime = 0.0
        self._access: dict[str, Any] = {}

    def _load(self) -> dict[str, Any]:
        mtime = self.path.stat().st_mtime
        if mtime != self._mtime:
            self._access = json.loads(self.path.read_text())
            self._mtime = mtime
        return self._access

    def get(self, key: str) -> bytes | None:
        url = self._load()["get"].get(key)
        if url is None:
            raise PermissionError(f"no read access to {key}")

        def call() -> bytes | None:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                raise

        return with_retries(call, statuses=_RETRY_STATUSES)

    def put(self, key: str, data: bytes) -> None:
        post = self._load()["post"]
        if not key.startswith(post["prefix"]):
            raise PermissionError(f"no write access to {key}")
        body, content_type = _multipart({**post["fields"], "key": key}, data)
        request = urllib.request.Request(post["url"], data=body, method="POST",
                                         headers={"Content-Type": content_type})

        def call() -> None:
            with urllib.request.urlopen(request, timeout=120):
                return

        with_retries(call, statuses=_RETRY_STATUSES)

    def size(self, key: str) -> int | None:
        data = self.get(key)
        return None if data is None else len(data)

    def delete(self, key: str) -> None:
        raise PermissionError("the agent never deletes objects")

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> list[str]:
        raise PermissionError("the agent cannot list the bucket")

    def open_read(self, key: str) -> Iterator[bytes]:
        data = self.get(key)
        if data is None:
            raise FileNotFoundError(key)
        yield data


def _multipart(fields: dict[str, str], data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="blob"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
