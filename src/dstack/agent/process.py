"""Starting and killing a job's whole process tree, from /proc (the agent needs nothing but the
standard library of a stock image's python3)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return data[data.rindex(")") + 2:].split()


def create_time(pid: int) -> float | None:
    """Seconds since the epoch when `pid` started (as psutil computes it), None if it is gone."""
    fields = _stat(pid)
    if fields is None:
        return None
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
    return children


def process_tree(pid: int, create_time_: float | None = None) -> list[int]:
    """The process and all its descendants; empty if it is gone or the pid was reused."""
    started = create_time(pid)
    if started is None or (create_time_ is not None and abs(started - create_time_) > 1):
        return []
    children = _children()
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(children.get(current, []))
    return tree


def kill_tree(pid: int, create_time: float | None = None, *, grace: float = 0.0) -> None:
    """SIGTERM the process group and every descendant, then SIGKILL what is left after `grace`."""
    pids = process_tree(pid, create_time)
    if not pids:
        return
    _signal_all(pid, pids, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    if grace > 0:
        alive = _wait(pids, grace)
        # Collect again: children forked during the grace period must die too.
        alive = sorted(set(alive) | set(process_tree(pid, create_time)))
        if alive:
            _signal_all(pid, alive, signal.SIGKILL)
            _wait(alive, 2)
    else:
        _wait(pids, 2)


def _wait(pids: list[int], timeout: float) -> list[int]:
    """Wait until the processes have exited (or are zombies); returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    return alive


def _signal_all(pgid: int, pids: list[int], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_process(proc: Any, timeout: float = 5.0) -> None:
    """SIGTERM a child (a subprocess.Popen), SIGKILL it if it is still there after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
