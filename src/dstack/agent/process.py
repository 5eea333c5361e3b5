"""Starting and killing a job's whole process tree."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil


def process_tree(pid: int, create_time: float | None = None) -> list[psutil.Process]:
    """The process and all its descendants; empty if it is gone or the pid was reused."""
    try:
        root = psutil.Process(pid)
        if create_time is not None and abs(root.create_time() - create_time) > 1:
            return []
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(pid: int, create_time: float | None = None, *, grace: float = 0.0) -> None:
    """SIGTERM the process group and every descendant, then SIGKILL what is left after `grace`."""
    procs = process_tree(pid, create_time)
    if not procs:
        return
    _signal_all(pid, procs, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    if grace > 0:
        _gone, alive = psutil.wait_procs(procs, timeout=grace)
        # Collect again: children forked during the grace period must die too.
        alive = {p.pid: p for p in alive} | {p.pid: p for p in process_tree(pid, create_time)}
        if alive:
            _signal_all(pid, list(alive.values()), signal.SIGKILL)
            psutil.wait_procs(list(alive.values()), timeout=2)
    else:
        psutil.wait_procs(procs, timeout=2)


def _signal_all(pgid: int, procs: list[psutil.Process], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


