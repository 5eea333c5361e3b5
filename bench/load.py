"""HTTP load on loopback: `wrk` where it is installed (C, so the load generator takes little of the
CPUs), else a bounded asyncio client in this process (whose own CPU then weighs on every figure)."""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass


@dataclass
class Load:
    p50_ms: float
    p99_ms: float
    rps: float
    tool: str


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def measure(url: str, connections: int, headers: dict[str, str], *, method: str = "GET", body: str | None = None,
            seconds: float = 4, requests: int = 1500) -> Load:
    if have_wrk():
        return _wrk(url, connections, headers, method=method, body=body, seconds=seconds)
    return asyncio.run(_python(url, connections, headers, method=method, body=body, requests=requests,
                               seconds=seconds))


def _wrk(url: str, connections: int, headers: dict[str, str], *, method: str, body: str | None,
         seconds: float) -> Load:
    args = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s", "--latency"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if method != "GET" or body is not None:
            # wrk sends a request the script describes; the body as a Lua long string.
            script.write(f'wrk.method = "{method}"\nwrk.body = [==[{body or ""}]==]\n')
            script.flush()
            args += ["-s", script.name]
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency: dict[int, float] = {}
    for q in (50, 99):
        match = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        latency[q] = float(match.group(1)) * units[match.group(2)]
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rate, out
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert errors is None, out
    return Load(latency[50], latency[99], float(rate.group(1)), "wrk")


async def _python(url: str, connections: int, headers: dict[str, str], *, method: str, body: str | None,
                  requests: int, seconds: float) -> Load:
    import httpx

    latencies: list[float] = []
    per_worker = max(1, requests // connections)

    async def worker() -> None:
        async with httpx.AsyncClient(headers=headers, limits=httpx.Limits(max_connections=1), timeout=60) as client:
            await client.request(method, url, content=body)  # connect first: requests, not handshakes
            for _ in range(per_worker):
                if time.perf_counter() > deadline:  # bounded in time too: a slow server ends the round
                    break
                started = time.perf_counter()
                response = await client.request(method, url, content=body)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text

    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(worker() for _ in range(connections)))
    rate = len(latencies) / (time.perf_counter() - started)
    cuts = statistics.quantiles(latencies, n=100)
    return Load(cuts[49] * 1000, cuts[98] * 1000, rate, "python")
