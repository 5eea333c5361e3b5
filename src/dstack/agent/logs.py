"""Batches job output into log chunks in the bucket."""

from __future__ import annotations

import json
import threading
import time

from dstack.storage.base import Storage
from dstack.storage.layout import log_chunk_key

FLUSH_INTERVAL_S = 0.1
MAX_LINES_PER_CHUNK = 1000


class LogWriter:
    """Collects lines and writes them as numbered, immutable chunks.

    A chunk is written at most every FLUSH_INTERVAL_S (so the first line shows up fast)
    or when it reaches MAX_LINES_PER_CHUNK (so a chatty job produces few objects).
    """

    def __init__(self, storage: Storage, prefix: str, start_seq: int = 0) -> None:
        self._storage = storage
        self._prefix = prefix
        self._seq = start_seq
        self._buffer: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="log-flusher", daemon=True)
        self._thread.start()

    def write(self, message: str) -> None:
        with self._lock:
            self._buffer.append({"t": round(time.time(), 3), "m": message})
            full = len(self._buffer) >= MAX_LINES_PER_CHUNK
        if full:
            self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        while True:
            with self._lock:
                if not self._buffer:
                    return
                batch = self._buffer[:MAX_LINES_PER_CHUNK]
                del self._buffer[:MAX_LINES_PER_CHUNK]
                seq = self._seq
                self._seq += 1
                # Upload inside the lock so chunks land strictly in sequence order.
                body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in batch).encode()
                self._storage.put(log_chunk_key(self._prefix, seq), body)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()
