"""A bucket that is a directory on this machine (the local backend's storage)."""

from __future__ import annotations

import os
import posixpath
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dstack.storage.base import Storage


class DirectoryStorage(Storage):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()
        self._root = str(self.root)
        self._inside = self._root.rstrip("/") + "/"

    def _path(self, key: str) -> Path:
        """Where `key` lies; ValueError if it would lie outside the bucket (`..`, an absolute key, or
        a symlink below the root that points out). Called for every object the agents and the
        reconciler touch: the key is normalized as a string, and only what lies below the (already
        resolved) root is looked at, a component at a time; a symlink there is resolved in full."""
        norm = posixpath.normpath(key)
        if norm == ".":
            return self.root
        if norm.startswith(("/", "../")) or norm == "..":
            raise ValueError(f"storage key {key!r} escapes the bucket")
        path = f"{self._inside}{norm}"
        current = self._root.rstrip("/")
        for part in norm.split("/"):
            current = f"{current}/{part}"
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):
                break  # nothing below exists: no link further down either
            if stat.S_ISLNK(mode):
                real = os.path.realpath(path)
                if not real.startswith(self._inside) and real != self._root:
                    raise ValueError(f"storage key {key!r} escapes the bucket")
                return Path(real)
        return Path(path)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temp file in the same directory and rename: readers never see half an object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: str) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        try:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def size(self, key: str) -> int | None:
        try:
            path = self._path(key)
            return path.stat().st_size if path.is_file() else None
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> list[str]:
        base = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    keys.append(key)
        keys.sort()
        return keys[:limit] if limit is not None else keys

    def open_read(self, key: str) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
