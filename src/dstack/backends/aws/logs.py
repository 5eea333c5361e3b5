"""Job logs in CloudWatch Logs: the instance writes (through its role), the server reads.

Groups: /dstack/jobs/{bucket}/{project} (job output), /dstack/runners/{bucket}/{project} (agents).
Streams: {run_id}/{job_id}. The user's policy lets the server create groups and streams and
filter events, nothing more (no PutLogEvents, no GetLogEvents).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from typing import Any

from botocore.exceptions import ClientError

from dstack.backends.aws.session import error_code
from dstack.core.runs import LogEvent

MAX_EVENTS_PER_PAGE = 10_000
# FilterLogEvents is limited to 5 requests/s per account and region: the server stays under it for
# every follower together (each waits its turn), and answers one it cannot serve in time with
# "nothing new yet".
FILTER_RATE = 3.0
# How long a read waits for its turn under the rate limit before it answers "nothing new yet".
READ_WAIT_S = 5.0
# CloudWatch may show an event after later ones: readers look this far back for such late events.
LATE_WINDOW_MS = 5000
READER_TTL_S = 600.0


def job_group(bucket: str, project: str) -> str:
    return f"/dstack/jobs/{bucket}/{project}"


def runner_group(bucket: str, project: str) -> str:
    return f"/dstack/runners/{bucket}/{project}"


class _RateLimiter:
    """Evenly spaced requests, no bursts: `take()` is True when one may go now."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.at = rate, 1.0, time.monotonic()
        self._lock = threading.Lock()

    def take(self, wait: float = 0.0) -> bool:
        """Take a turn, waiting up to `wait` seconds for one (readers run in worker threads)."""
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                now = time.monotonic()
                self.tokens = min(1.0, self.tokens + (now - self.at) * self.rate)
                self.at = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return True
                delay = (1 - self.tokens) / self.rate
            if now + delay > deadline:
                return False
            time.sleep(delay)


def _event_id(event: dict[str, Any]) -> str:
    """CloudWatch's event id (a stand-in without one: what identifies the event otherwise)."""
    if event.get("eventId"):
        return str(event["eventId"])
    digest = hashlib.sha1(event.get("message", "").encode(), usedforsecurity=False).hexdigest()[:16]
    return f"{event.get('timestamp')}/{event.get('ingestionTime')}/{digest}"


_LIMITERS: dict[str, _RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


class CloudWatchLogs:
    def __init__(self, client: Any) -> None:
        self._logs = client
        self._groups: set[str] = set()
        self._lock = threading.Lock()
        # One limiter per region for the whole server (the quota is per account and region; several
        # projects may share an account).
        region = getattr(getattr(client, "meta", None), "region_name", None) or ""
        with _LIMITERS_LOCK:
            self._limiter = _LIMITERS.setdefault(region, _RateLimiter(FILTER_RATE))
        # reader id -> (last use, event id -> timestamp of what it delivered in the late window)
        self._readers: dict[str, tuple[float, dict[str, int]]] = {}

    def ensure_stream(self, group: str, stream: str) -> None:
        with self._lock:
            known = group in self._groups
        if not known:
            try:
                self._logs.create_log_group(logGroupName=group)
            except ClientError as exc:
                if error_code(exc) != "ResourceAlreadyExistsException":
                    raise
            with self._lock:
                self._groups.add(group)
        try:
            self._logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except ClientError as exc:
            if error_code(exc) != "ResourceAlreadyExistsException":
                raise

    def read(self, group: str, stream: str, next_token: str | None) -> tuple[list[LogEvent], str, bool]:
        """Events after the token; a follower the rate limit cannot serve now (or a throttled one)
        gets nothing new, the same token, and `more`: what it did not read may be there."""
        if not self._limiter.take(wait=READ_WAIT_S):
            return [], next_token or "", True
        try:
            return self._read(group, stream, next_token)
        except ClientError as exc:
            if error_code(exc) in ("ThrottlingException", "Throttling", "RequestLimitExceeded"):
                return [], next_token or "", True
            raise

    def _read(self, group: str, stream: str, next_token: str | None) -> tuple[list[LogEvent], str, bool]:
        """Events after the token `"{timestamp_ms}:{events_seen_at_that_timestamp}:{reader}"`.

        CloudWatch may index an event after later ones: each reader re-reads the last LATE_WINDOW_MS
        and skips the event ids it has delivered (kept here, per reader, for READER_TTL_S). A token
        whose reader this server does not know (a restart, another replica) resumes without the
        overlap, as before."""
        start_ms, seen, reader = 0, 0, ""
        if next_token and ":" in next_token:
            parts = next_token.split(":")
            start_ms, seen = int(parts[0]), int(parts[1])
            reader = parts[2] if len(parts) > 2 else ""
        with self._lock:
            now = time.monotonic()
            self._readers = {k: v for k, v in self._readers.items() if now - v[0] < READER_TTL_S}
            state = self._readers.get(reader) if reader else None
            if state is None and not next_token:
                reader, state = uuid.uuid4().hex[:12], (now, {})
        delivered: dict[str, int] = dict(state[1]) if state else {}
        overlap = state is not None and bool(next_token)
        events: list[LogEvent] = []
        read_from = max(0, start_ms - LATE_WINDOW_MS) if overlap else start_ms
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamNames": [stream], "startTime": read_from}
        skip, last_ms, at_last = (0 if overlap else seen), start_ms, seen
        while True:
            if "nextToken" in kwargs and not self._limiter.take(wait=READ_WAIT_S):
                more = True  # the rest on the next call
                break
            try:
                page = self._logs.filter_log_events(**kwargs)
            except ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return [], next_token or "", False  # the stream is not there yet
                if events and error_code(exc) in ("ThrottlingException", "Throttling"):
                    more = True
                    break
                raise
            for event in page.get("events", []):
                ts = int(event["timestamp"])
                event_id = _event_id(event)
                if overlap and event_id in delivered:
                    continue
                if ts == start_ms and skip > 0:
                    skip -= 1
                    continue
                events.append(LogEvent(timestamp=ts / 1000, message=event["message"]))
                delivered[event_id] = ts
                if ts >= last_ms:
                    at_last = at_last + 1 if ts == last_ms else 1
                    last_ms = ts
            token = page.get("nextToken")
            if not token or len(events) >= MAX_EVENTS_PER_PAGE:
                more = bool(token)
                break
            kwargs["nextToken"] = token
        if reader:
            with self._lock:
                self._readers[reader] = (time.monotonic(), {k: v for k, v in delivered.items()
                                                            if v >= last_ms - LATE_WINDOW_MS})
        return events, f"{last_ms}:{at_last}" + (f":{reader}" if reader else ""), more
