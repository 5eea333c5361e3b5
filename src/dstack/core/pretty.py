"""How resources, ranges and statuses read in the CLI, from plain data (the JSON the server sends, or
a model's dump): one implementation for the models' `pretty()`/`str()` and for `dstack ps`, which
formats the server's JSON without loading the models (see dstack/cli/ps.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The statuses a job or run ends in (`FINISHED_STATUSES` in dstack/core/runs.py is made from these).
FINISHED = frozenset({"done", "failed", "stopped", "terminated"})


def format_memory(gb: float | None) -> str:
    if gb is None:
        return ""
    if gb >= 1024 and gb % 1024 == 0:
        return f"{gb / 1024:g}TB"
    if gb < 1:
        return f"{gb * 1024:g}MB"
    return f"{gb:g}GB"


def format_range(low: Any, high: Any, fmt: Callable[[Any], str]) -> str:
    if low is not None and low == high:
        return fmt(low)
    return f"{fmt(low) if low is not None else ''}..{fmt(high) if high is not None else ''}"


def count_text(count: dict[str, Any]) -> str:
    return format_range(count.get("min"), count.get("max"), str)


def memory_text(memory: dict[str, Any]) -> str:
    return format_range(memory.get("min"), memory.get("max"), format_memory)


def gpu_text(gpu: dict[str, Any]) -> str:
    """A GPU spec (vendor, name, memory, count) as written in a configuration: `A100:80GB:2`."""
    parts = []
    if gpu.get("vendor") and not gpu.get("name"):
        parts.append(gpu["vendor"])
    if gpu.get("name"):
        parts.append(",".join(gpu["name"]))
    if gpu.get("memory"):
        parts.append(memory_text(gpu["memory"]))
    parts.append(count_text(gpu.get("count") or {"min": 1, "max": 1}))
    return ":".join(parts)


def resources_spec_text(spec: dict[str, Any]) -> str:
    """What a configuration asks for: `cpu=2.. mem=8GB.. gpu=A100:2 disk=100GB..`."""
    arch = spec.get("cpu_arch")
    parts = [f"cpu={arch + ':' if arch else ''}{count_text(spec['cpu'])}", f"mem={memory_text(spec['memory'])}"]
    gpu = spec.get("gpu")
    if gpu is not None and (gpu.get("count") or {}).get("max") != 0:
        parts.append(f"gpu={gpu_text(gpu)}")
    if spec.get("disk") is not None:
        parts.append(f"disk={memory_text(spec['disk']['size'])}")
    return " ".join(parts)


def instance_resources_text(resources: dict[str, Any]) -> str:
    """What an offer or instance has: `8xCPU, 32GB, 1xA100 (80GB), 100GB disk`."""
    parts = [f"{resources['cpus']}xCPU", format_memory(round(resources["memory_gb"], 1))]
    gpus = resources.get("gpus") or []
    if gpus:
        parts.append(f"{len(gpus)}x{gpus[0]['name']} ({format_memory(gpus[0]['memory_gb'])})")
    if resources.get("disk_gb") is not None:
        parts.append(f"{format_memory(round(resources['disk_gb']))} disk")
    return ", ".join(parts)


def status_text(status: str, reason: str | None, exit_code: int | None) -> str:
    """`running`, `failed (exit code 3)`, `stopped (inactive for 4s …)`: as the CLI shows a status."""
    text = str(status)
    if text == "failed" and exit_code is not None:
        text += f" (exit code {exit_code})"
    elif reason and (text in FINISHED and text != "done" or text in ("provisioning", "submitted")):
        # Why it ended; while provisioning, what it is doing (pulling an image); while submitted, what
        # it waits for (its schedule, capacity). A reason that repeats the status stands for both:
        # `stopped by user`, not `stopped (stopped by user)`.
        text = reason if reason.startswith(text + " ") else f"{text} ({reason})"
    return text
