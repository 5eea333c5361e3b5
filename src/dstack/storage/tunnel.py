"""The bucket through the server, for the agent on a host of an SSH fleet: the host has no cloud
credentials and no route to the server, so the server's own SSH connection to it forwards a Unix
socket on the host (`ssh -R`) to the server's HTTP port. The agent's token (in a 0600 file) gives
it its instance's prefix and its jobs' prefixes, and nothing else (server/routers/agent_storage.py).

URL: tunnel:///path/to/socket?token_file=/path/to/token
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from dstack.storage.base import Storage
from dstack.storage.sigv4 import with_retries

API = "/api/agent/storage"
SECRETS_API = "/api/agent/secrets"
_RETRY_STATUSES = frozenset({502, 503, 504})


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class _HTTPError(OSError):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        self.code = status


class TunnelStorage(Storage):
    def __init__(self, socket_path: str, token_file: str) -> None:
        self.socket_path = socket_path
        self.token_file = token_file
        self.url = f"tunnel://{socket_path}?token_file={urllib.parse.quote(token_file)}"

    def _token(self) -> str:
        return Path(self.token_file).read_text().strip()

    def _call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        def once() -> tuple[int, dict[str, str], bytes]:
            conn = _UnixConnection(self.socket_path)
            try:
                headers = {"Authorization": f"Bearer {self._token()}", "Content-Type": "application/octet-stream"}
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.status in _RETRY_STATUSES:  # the tunnel or the server is restarting
                    raise ConnectionError(f"HTTP {response.status}")
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            finally:
                conn.close()

        status, headers, data = with_retries(once)
        if status >= 400 and status != 404:
            raise _HTTPError(status, data)
        return status, headers, data

    @staticmethod
    def _object(key: str) -> str:
        return f"{API}/objects/{urllib.parse.quote(key, safe='/')}"

    def put(self, key: str, data: bytes) -> None:
        self._call("PUT", self._object(key), data)

    def get(self, key: str) -> bytes | None:
        status, _, data = self._call("GET", self._object(key))
        return None if status == 404 else data

    def size(self, key: str) -> int | None:
        status, headers, _ = self._call("HEAD", self._object(key))
        return None if status == 404 else int(headers.get("x-object-size", "0"))

    def delete(self, key: str) -> None:
        self._call("DELETE", self._object(key))

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> list[str]:
        query = {"prefix": prefix, **({"start_after": start_after} if start_after else {}),
                 **({"limit": str(limit)} if limit else {})}
        _, _, data = self._call("GET", f"{API}/list?{urllib.parse.urlencode(query)}")
        return list(json.loads(data))

    def job_secrets(self, job_id: str) -> dict[str, str]:
        """The job's secrets, from the server (they never enter the bucket)."""
        _, _, data = self._call("GET", f"{SECRETS_API}/{urllib.parse.quote(job_id, safe='')}")
        return dict(json.loads(data))

    def open_read(self, key: str) -> Iterator[bytes]:
        data = self.get(key)
        if data is not None:
            yield data
