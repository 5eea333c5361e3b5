"""Keeping the server's memory near what it uses (glibc's allocator; elsewhere these do nothing).

After a burst (many concurrent requests, a dispatch of hundreds of jobs) the memory Python frees sits
in glibc's heaps, spread over one arena per thread that ever contended (the event loop, SQLite's
connection threads, the executor's), and RSS stays at the burst's peak. Two arenas are enough for one
event loop, and `malloc_trim` gives the free pages back once the server is quiet again."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import platform
import time
from typing import Any

logger = logging.getLogger("dstack.server.memory")

M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2
CHECK_EVERY_S = 1.0
QUIET_CPU_SHARE = 0.05  # a second with less of our CPU than this is quiet
TRIM_GROWTH_BYTES = 4 << 20  # what RSS must have grown by since the last trim to be worth one
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _glibc() -> Any | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def limit_arenas() -> None:
    """At most two malloc arenas, unless MALLOC_ARENA_MAX says otherwise; before threads start."""
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, ARENAS)


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


async def trim_after_bursts() -> None:
    """Each second: if the server was quiet and RSS grew since the last trim, give free heap pages back
    (a few ms; never while busy, when the pages would be asked for again at once)."""
    libc, baseline = _glibc(), resident_bytes()
    if libc is None or not baseline:
        return
    cpu = time.process_time()
    while True:
        await asyncio.sleep(CHECK_EVERY_S)
        now_cpu = time.process_time()
        quiet = now_cpu - cpu < QUIET_CPU_SHARE * CHECK_EVERY_S
        cpu = now_cpu
        current = resident_bytes()
        if quiet and current - baseline >= TRIM_GROWTH_BYTES:
            libc.malloc_trim(0)
            baseline = resident_bytes()
            logger.debug("trimmed the heap: %d → %d MiB", current >> 20, baseline >> 20)
            cpu = time.process_time()  # the trim's own CPU does not make the next second busy
        elif current < baseline:
            baseline = current
