"""`dstack attach` on the local backend: first command output after the run is running, and the
throughput of a forwarded port (a 64 MB file served by the job, read through the tunnel)."""

from __future__ import annotations

import re
import signal
import socket
import statistics
import time
from pathlib import Path

import httpx
from tests.harness import Env, Server, wait_for


def time_attach(env: Env, run: str, repo: Path, times: int = 7) -> list[float]:
    """Seconds of each `dstack attach RUN -c true`, the run already running and reachable."""
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        result = env.cli("attach", run, "-c", "true", cwd=repo)
        samples.append(time.perf_counter() - started)
        assert result.returncode == 0, result.stderr
    return samples


def bench_attach(server: Server, env: Env) -> tuple[float, float]:
    """(median seconds of `dstack attach RUN -c true`, MB/s through the forwarded port)."""
    repo = env.home / "attach-repo"
    repo.mkdir()
    assert env.cli("init", cwd=repo).returncode == 0
    (repo / "blob.bin").write_bytes(b"\0" * (64 * 2**20))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (repo / ".dstack.yml").write_text(
        f"type: dev-environment\nname: bench-dev\nports: ['*:{port}']\n"
        f"init:\n  - python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &\n")
    assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
    with server.api() as api:
        wait_for(lambda: api.get("/api/projects/main/runs/bench-dev").json()["status"] == "running", 60,
                 message="the dev environment")
    samples = time_attach(env, "bench-dev", repo)
    attach = env.popen_cli("attach", "bench-dev", cwd=repo)
    try:
        out = ""
        while "forwarded to localhost:" not in out:
            out += attach.stdout.readline()
        local = int(re.search(r"forwarded to localhost:(\d+)", out).group(1))
        wait_for(lambda: _reachable(local), 30, message="the forward")
        started = time.perf_counter()
        size = len(httpx.get(f"http://127.0.0.1:{local}/blob.bin", timeout=120).content)
        throughput = size / 2**20 / (time.perf_counter() - started)
    finally:
        attach.send_signal(signal.SIGINT)
        attach.wait(timeout=30)
        env.cli("stop", "bench-dev", "--abort", cwd=repo)
    return statistics.median(samples), throughput


def _reachable(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False



