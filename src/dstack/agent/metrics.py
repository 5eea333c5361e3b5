"""CPU, memory and GPU use of the machine, sampled while the job runs (`dstack metrics`,
`utilization_policy`).

GPU samples come from `nvidia-smi`, or from a file named by DSTACK_GPU_METRICS_FILE: JSON lines,
each `{"t": unix time, "gpus": [{"util": percent, "memory_used_mb": n, "memory_total_mb": n}]}`
(another collector's samples, replayed with their own times; the tests feed a CPU-only machine
this way). For `utilization_policy` the agent reports, per sample, since when some GPU has stayed
under the floor without a break; the server stops the run once that lasts a whole time window.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any

KEEP_SECONDS = 300  # the samples `dstack metrics` can show


def gpu_samples(now: float) -> list[dict[str, Any]]:
    """[(t, gpus)] since the last call: one fresh sample, or the file source's lines."""
    path = os.environ.get("DSTACK_GPU_METRICS_FILE")
    if path:
        try:
            with open(path) as f:
                lines = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            return []
        return [{"t": float(item.get("t", now)), "gpus": list(item.get("gpus") or [])} for item in lines]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=utilization.gpu,memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and all(p.replace(".", "").isdigit() for p in parts):
            gpus.append({"util": float(parts[0]), "memory_used_mb": float(parts[1]),
                         "memory_total_mb": float(parts[2])})
    return [{"t": now, "gpus": gpus}] if gpus else []


class _CpuClock:
    def __init__(self) -> None:
        self.last: tuple[float, float] | None = None

    def percent(self) -> float | None:
        """The machine's CPU use since the last call, percent of all cores (from /proc/stat)."""
        try:
            with open("/proc/stat") as f:
                fields = [float(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle, total = fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)
        last, self.last = self.last, (idle, total)
        if last is None or total <= last[1]:
            return None
        return round(100.0 * (1 - (idle - last[0]) / (total - last[1])), 1)


def memory_mb() -> tuple[float, float] | None:
    """(used, total) MB from /proc/meminfo."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: float(line.split()[1]) for line in f if len(line.split()) >= 2}
        return (info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0))) / 1024, info["MemTotal"] / 1024
    except (OSError, ValueError, KeyError):
        return None


class Sampler:
    """Keeps the recent samples and the low-utilization streak the policy needs."""

    def __init__(self, *, min_gpu_utilization: float | None) -> None:
        self.floor = min_gpu_utilization
        self.samples: list[dict[str, Any]] = []
        self.low_since: list[float | None] = []  # per GPU: start of its unbroken streak under the floor
        self._cpu = _CpuClock()
        self._cpu.percent()
        self._seen_t = 0.0
        self._last_gpu_t: float | None = None

    def sample(self) -> dict[str, Any]:
        now = time.time()
        current: dict[str, Any] = {"t": now, "cpu_percent": self._cpu.percent()}
        memory = memory_mb()
        if memory:
            current["memory_used_mb"], current["memory_total_mb"] = round(memory[0]), round(memory[1])
        for item in gpu_samples(now):
            if item["t"] <= self._seen_t:
                continue  # a file source's line already taken
            self._seen_t = item["t"]
            self._track(item["t"], item["gpus"])
            current["gpus"] = item["gpus"]
        self.samples = [s for s in self.samples if s["t"] > now - KEEP_SECONDS] + [current]
        return self.report(now)

    def _track(self, t: float, gpus: list[dict[str, Any]]) -> None:
        if self.floor is None:
            return
        if len(self.low_since) != len(gpus):
            self.low_since = [None] * len(gpus)
        for i, gpu in enumerate(gpus):
            if float(gpu.get("util", 0)) < self.floor:
                self.low_since[i] = self.low_since[i] if self.low_since[i] is not None else t
            else:
                self.low_since[i] = None
        self._last_gpu_t = t

    def report(self, now: float) -> dict[str, Any]:
        lows = [t for t in self.low_since if t is not None]
        last_t = self._last_gpu_t
        return {"t": now, "samples": self.samples[-30:],
                # How long some GPU has been under the floor, by the samples' own clock.
                "gpu_low_for": (last_t - min(lows)) if lows and last_t is not None else None}
