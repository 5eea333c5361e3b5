"""Job logs in CloudWatch Logs: the instance writes (through its role), the server reads.

Groups: /dstack/jobs/{bucket}/{project} (job output), /dstack/runners/{bucket}/{project} (agents).
Streams: {run_id}/{job_id}. The user's policy lets the server create groups and streams and
filter events, nothing more (no PutLogEvents, no GetLogEvents).
"""

from __future__ import annotations

import threading
from typing import Any

from botocore.exceptions import ClientError

from dstack.backends.aws.session import error_code
from dstack.core.runs import LogEvent

MAX_EVENTS_PER_PAGE = 10_000


def job_group(bucket: str, project: str) -> str:
    return f"/dstack/jobs/{bucket}/{project}"


def runner_group(bucket: str, project: str) -> str:
    return f"/dstack/runners/{bucket}/{project}"


class CloudWatchLogs:
    def __init__(self, client: Any) -> None:
        self._logs = client
        self._groups: set[str] = set()
        self._lock = threading.Lock()

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
        """Events after the token `"{timestamp_ms}:{events_seen_at_that_timestamp}"`."""
        start_ms, seen = 0, 0
        if next_token and ":" in next_token:
            start_ms, seen = (int(x) for x in next_token.split(":", 1))
        events: list[LogEvent] = []
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamNames": [stream], "startTime": start_ms}
        skip, last_ms, at_last = seen, start_ms, seen
        while True:
            try:
                page = self._logs.filter_log_events(**kwargs)
            except ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return [], next_token or "", False  # the stream is not there yet
                raise
            for event in page.get("events", []):
                ts = int(event["timestamp"])
                if ts == start_ms and skip > 0:
                    skip -= 1
                    continue
                events.append(LogEvent(timestamp=ts / 1000, message=event["message"]))
                at_last = at_last + 1 if ts == last_ms else 1
                last_ms = ts
            token = page.get("nextToken")
            if not token or len(events) >= MAX_EVENTS_PER_PAGE:
                more = bool(token)
                break
            kwargs["nextToken"] = token
        return events, f"{last_ms}:{at_last}", more
