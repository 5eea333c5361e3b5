"""The server gives the heap's free pages back once a burst is over (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A burst on other threads (as SQLite's connection threads and the executor's), leaving a few
# survivors scattered through the heap, then the server's trim loop for a few quiet seconds.
SCRIPT = """
import asyncio
from dstack.server.memory import limit_arenas, resident_bytes, trim_after_bursts

limit_arenas()
survivors = []

def burst():
    chunks = [bytes(2000) + bytes([i % 251]) for i in range(40_000)]  # ~80 MB from malloc, not pymalloc
    survivors.extend(chunks[::200])

async def main():
    trimming = asyncio.create_task(trim_after_bursts())  # from the start, as in the server
    await asyncio.sleep(0)
    await asyncio.gather(*[asyncio.to_thread(burst) for _ in range(4)])
    after_burst = resident_bytes()
    for _ in range(300):  # quiet, until the heap was given back (30 s at most)
        await asyncio.sleep(0.1)
        if resident_bytes() < after_burst - (100 << 20):
            break
    trimming.cancel()
    return after_burst

after_burst = asyncio.run(main())
print(after_burst >> 20, resident_bytes() >> 20, len(survivors))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="trimming is glibc's malloc_trim")
def test_a_quiet_server_gives_back_what_a_burst_freed() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    after_burst, after_quiet, _ = map(int, out.stdout.split())
    assert after_burst - after_quiet >= 100, (after_burst, after_quiet)  # MiB: most of the ~300 MB freed
