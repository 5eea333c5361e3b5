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
# CloudWatch's PutLogEvents: at most 1,048,576 bytes a batch, counted as each message's UTF-8 bytes
# plus 26; at most 256 KB an event. Chunks in the bucket keep to the same bounds.
MAX_CHUNK_BYTES = 1_000_000
EVENT_OVERHEAD = 26
MAX_MESSAGE_BYTES = 200_000
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
        # CloudWatch rejects empty messages (long ones were cut when written).
        events = [{"timestamp": int(e["t"] * 1000), "message": e["m"] or " "} for e in batch]
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
        self._lock = threading.Lock()  # the buffer
        self._sink_lock = threading.Lock()  # one chunk written at a time, in order
        self._wake = threading.Event()
        self._closed = False
        self.written = 0  # lines the sink accepted
        self.total = 0  # lines given
        self.errors = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="log-flusher", daemon=True)
        self._thread.start()

    def write(self, message: str) -> None:
        for secret in self._secrets:
            if secret in message:
                message = message.replace(secret, MASK)
        if len(message) > MAX_MESSAGE_BYTES // 4:  # may be over the limit in UTF-8: cut by bytes
            message = message.encode()[:MAX_MESSAGE_BYTES].decode(errors="ignore")
        with self._lock:
            self._buffer.append({"t": round(time.time(), 3), "m": message})
            self.total += 1
            full = len(self._buffer) >= MAX_LINES_PER_CHUNK
        if full:
            self._wake.set()

    def _loop(self) -> None:
        """Flush until closed; a failing sink (network, throttling) is retried with backoff and never
        ends the loop: the lines stay buffered, in order."""
        failures = 0
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL_S if not failures else min(30.0, 0.5 * 2 ** failures))
            self._wake.clear()
            failures = 0 if self.flush() else failures + 1

    def flush(self) -> bool:
        """Write what is buffered, in chunks within the line and byte bounds. False if the sink
        failed: the unwritten lines stay first in the buffer for the next try."""
        # One writer at a time (chunks land strictly in sequence order), but never holding the
        # buffer's lock over the network: the job's output is read on while a chunk is written (a
        # slow or failing sink must not stall the reader, whose pipe would then fill up).
        with self._sink_lock:
            while True:
                with self._lock:
                    if not self._buffer:
                        return True
                    count, size = 0, 0
                    for event in self._buffer[:MAX_LINES_PER_CHUNK]:
                        size += len(event["m"].encode()) + EVENT_OVERHEAD
                        if count and size > MAX_CHUNK_BYTES:
                            break
                        count += 1
                    batch = self._buffer[:count]
                try:
                    self._sink(self._seq, batch)
                except Exception as exc:  # noqa: BLE001 - logging must never fail the job
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    return False
                with self._lock:
                    del self._buffer[:count]  # only this writer removes: the batch is still first
                self._seq += 1
                self.written += count

    def close(self, *, timeout: float = 120.0) -> None:
        """Stop the flusher and write the rest, retrying for up to `timeout` seconds; never raises."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        deadline = time.monotonic() + timeout
        delay = 0.5
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(10.0, delay * 2)
