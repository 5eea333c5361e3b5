"""Requests per second as the proxy sees them, and the replica count a service's `scaling` asks for."""

from __future__ import annotations

import math
import time
from typing import Any

# The RPS a service is scaled on is averaged over this window (times the server's time scale).
RPS_WINDOW = 60.0
_BUCKETS = 30


class RpsMeter:
    """Requests counted in `_BUCKETS` time buckets covering the window: O(1) per request, no list of
    timestamps however high the rate."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.width = window / _BUCKETS
        self.counts = [0] * _BUCKETS
        self.stamps = [-1] * _BUCKETS

    def hit(self, now: float | None = None) -> None:
        slot = int((now if now is not None else time.monotonic()) / self.width)
        i = slot % _BUCKETS
        if self.stamps[i] != slot:
            self.stamps[i], self.counts[i] = slot, 0
        self.counts[i] += 1

    def rate(self, now: float | None = None) -> float:
        now = now if now is not None else time.monotonic()
        slot = int(now / self.width)
        total = sum(c for c, s in zip(self.counts, self.stamps, strict=True) if slot - _BUCKETS < s <= slot)
        return total / self.window


class Scaler:
    """upstream's RPS autoscaler: ceil(rps / target) replicas within `replicas`, changed no sooner
    than `scale_up_delay` / `scale_down_delay` after the last change; from zero at once (a request is
    waiting)."""

    def __init__(self, *, current: int, time_scale: float) -> None:
        self.current = current
        self.time_scale = time_scale
        self.changed_at = time.monotonic()

    def desired(self, conf: Any, rps: float, now: float | None = None) -> int:
        low, high = conf.replicas.min or 0, conf.replicas.max or 0
        if conf.scaling is None:
            self.current = low
            return low
        now = now if now is not None else time.monotonic()
        wanted = max(low, min(high, math.ceil(rps / conf.scaling.target - 1e-9)))
        self.current = max(low, min(high, self.current))
        if wanted > self.current:
            delay = 0.0 if self.current == 0 else conf.scaling.scale_up_delay * self.time_scale
        elif wanted < self.current:
            delay = conf.scaling.scale_down_delay * self.time_scale
        else:
            return self.current
        if now - self.changed_at >= delay:
            self.current, self.changed_at = wanted, now
        return self.current
