"""The bucket interface. Writes are whole-object and atomic; listings are sorted by key."""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator
from typing import Any


class Storage(abc.ABC):
    url: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> list[str]:
        """Keys under `prefix`, sorted, after `start_after`, at most `limit`."""

    @abc.abstractmethod
    def size(self, key: str) -> int | None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def open_read(self, key: str) -> Iterator[bytes]:
        """Stream an object in chunks (for archives and artifacts)."""

    def put_file(self, key: str, path: str) -> None:
        with open(path, "rb") as f:
            self.put(key, f.read())

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, separators=(",", ":")).encode())

    def get_json(self, key: str) -> Any | None:
        data = self.get(key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None
