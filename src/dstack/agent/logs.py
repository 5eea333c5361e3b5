"""Batches job output into log chunks: in the bucket, or in CloudWatch Logs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from dstack.storage.base import Storage
from dstack.storage.layout import log_chunk_key

FLUSH_INTERVAL_S = 0.1
MAX_LINES_PER_CHUNK = 1000
MASK = "********"

Sink = Callable[[int, list[dict[str, Any]]], None]


def bucket_sink(storage: Storage, prefix: str) -> Sink:
    def write(seq: int, batch: list[dict[str, Any]]) -> None:
        body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in batch).encode()
        storage.put(log_chunk_key(prefix, seq), body)

    return write


def cloudwatch_sink(group: str, stream: str, region: str) -> Sink:
    from dstack.storage.sigv4 import AWSClient

    logs = AWSClient("logs", region)

    def write(seq: int, batch: list[dict[str, Any]]) -> None:
        # CloudWatch rejects empty messages and events over 256 KB.
        events = [{"timestamp": int(e["t"] * 1000), "message": (e["m"] or " ")[:200_000]} for e in batch]
        logs.json_call("Logs_20140328.PutLogEvents",
                       {"logGroupName": group, "logStreamName": stream, "logEvents": events})

    return write


class LogWriter:
    """Collects lines and writes them as numbered, immutable chunks.

    A chunk is written at most every FLUSH_INTERVAL_S (so the first line shows up fast)
    or when it reaches MAX_LINES_PER_CHUNK (so a chatty job produces few objects).
    Secret values are masked before anything leaves the instance.
    """

    def __init__(self, sink: Sink, *, secrets: list[str] | None = None) -> None:
        self._sink = sink
        self._secrets = sorted((s for s in secrets or [] if len(s) >= 4), key=len, reverse=True)
        self._seq = 0
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="log-flusher", daemon=True)
        self._thread.start()

    def write(self, message: str) -> None:
        for secret in self._secrets:
            if secret in message:
                message = message.replace(secret, MASK)
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
                # Write inside the lock so chunks land strictly in sequence order.
                self._sink(seq, batch)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()
