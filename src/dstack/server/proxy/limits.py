"""`rate_limits`: a token bucket per limit and key (the client's address, or a header's value)."""

from __future__ import annotations

import time
from typing import Any


class RateLimiter:
    def __init__(self, limits: list[Any]) -> None:
        # The longest matching prefix applies (as upstream's gateway does).
        self.limits = sorted(limits, key=lambda lim: len(lim.prefix), reverse=True)
        self.buckets: dict[tuple[int, str], tuple[float, float]] = {}  # (limit, key) -> (tokens, at)

    def check(self, path: str, client: str, headers: Any) -> float | None:
        """None if the request may go; else seconds until it may (429's Retry-After)."""
        for index, limit in enumerate(self.limits):
            if not path.startswith(limit.prefix):
                continue
            key_spec = limit.key or {}
            key = headers.get(key_spec.get("header", ""), "") if key_spec.get("type") == "header" else client
            capacity = float(limit.burst or 0) + 1.0
            now = time.monotonic()
            tokens, at = self.buckets.get((index, key), (capacity, now))
            tokens = min(capacity, tokens + (now - at) * limit.rps)
            if tokens < 1.0:
                self.buckets[(index, key)] = (tokens, now)
                return (1.0 - tokens) / limit.rps
            self.buckets[(index, key)] = (tokens - 1.0, now)
            if len(self.buckets) > 100_000:  # keys of clients long gone
                self.buckets.clear()
            return None
        return None
