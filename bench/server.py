"""The server's own figures: start (fresh and warm), list-runs throughput and tail latency, dispatch
rate with the server's CPU per job, and log throughput end to end."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
from tests.harness import Env, Server, free_port, wait_for

from bench.common import uploaded_repo
from bench.load import Load, measure


@dataclass
class Start:
    wall: float
    cpu: float


def time_start(command: list[str], env: dict[str, str], health: Callable[[int], bool], port: int,
               cwd: Path) -> Start:
    """Wall seconds from exec to the first good answer of `health`, and the server's CPU seconds by then."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        ps = psutil.Process(proc.pid)
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{command[0]} exited with {proc.returncode} before answering")
            if health(port):
                wall = time.perf_counter() - started
                times = ps.cpu_times()
                return Start(wall, times.user + times.system)
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def ours_health(port: int) -> bool:
    return answers(f"http://127.0.0.1:{port}/api/health")


def ours_start_command(port: int) -> list[str]:
    return [sys.executable, "-m", "dstack.cli.main", "server", "--port", str(port), "--log-level", "warning"]


def bench_server_start(tmp: Path, rounds: int = 5) -> tuple[Start, Start]:
    """(fresh, warm) medians: a new HOME (the database created and migrated), then the same again."""
    fresh: list[Start] = []
    warm: list[Start] = []
    for i in range(rounds):
        home = tmp / f"start-{i}"
        home.mkdir()
        env = Env(home=home).vars
        for samples in (fresh, warm):
            port = free_port()
            samples.append(time_start(ours_start_command(port), env, ours_health, port, home))
    return median_start(fresh), median_start(warm)


def median_start(samples: list[Start]) -> Start:
    return Start(statistics.median(s.wall for s in samples), statistics.median(s.cpu for s in samples))


def bench_list_runs(server: Server, env: Env, connections: int, limit: int = 100) -> Load:
    """`GET …/runs?all=true&limit=N` (1,000 runs stored): the newest page, as `dstack ps -a` asks it."""
    url = f"{server.url}/api/projects/main/runs?all=true&limit={limit}"
    return measure(url, connections, {"Authorization": f"Bearer {env.token()}"})


@dataclass
class Dispatch:
    jobs_per_s: float
    cpu_ms_per_job: float
    all_done_s: float


def bench_dispatch(server: Server, env: Env, count: int = 300) -> Dispatch:
    """`count` one-line tasks submitted at once: jobs dispatched (running or past it) per second from the
    first submit, and the server process's own CPU per job (its children, the jobs, not counted)."""
    from dstack.core.configurations import TaskConfiguration
    from dstack.core.runs import RunSpec

    client, repo_id, code_hash = uploaded_repo(server, env, "dispatch")
    conf = TaskConfiguration(type="task", commands=["true"], resources={"cpu": "1..", "memory": "0.1GB.."})
    ps = psutil.Process(server.proc.pid)
    before = ps.cpu_times()
    started = time.perf_counter()
    names = [f"dispatch-{i}" for i in range(count)]

    def submit(name: str) -> None:
        client.runs.submit(RunSpec(configuration=conf, repo_id=repo_id, code_hash=code_hash, run_name=name))

    dispatched_at: list[float] = []

    def watch() -> None:
        api = server.api()
        seen = 0
        while seen < count:
            runs = api.get("/api/projects/main/runs", params={"all": "true", "limit": count * 2}).json()
            seen = sum(1 for r in runs if r["name"].startswith("dispatch-") and r["status"] not in
                       ("submitted", "provisioning"))
            if seen >= count:
                dispatched_at.append(time.perf_counter())
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(submit, names))
    watcher.join(timeout=600)
    assert dispatched_at, "the jobs were not all dispatched in 10 minutes"
    after = ps.cpu_times()
    api = server.api()
    wait_for(lambda: all(r["status"] in ("done", "failed", "stopped", "terminated") for r in
                         api.get("/api/projects/main/runs", params={"all": "true", "limit": count * 2}).json()
                         if r["name"].startswith("dispatch-")), 600, interval=0.2, message="the jobs done")
    elapsed = dispatched_at[0] - started
    cpu = (after.user + after.system) - (before.user + before.system)
    return Dispatch(count / elapsed, cpu * 1000 / count, time.perf_counter() - started)


@dataclass
class LogThroughput:
    lines_per_s: float
    read_lines_per_s: float
    lost: int


def bench_logs(server: Server, env: Env, lines: int = 200_000) -> LogThroughput:
    """A task prints `lines` numbered lines: submit → every line returned through the API (end to end),
    then the same lines read again (the store alone); any line missing or out of order counts as lost."""
    from dstack.core.configurations import TaskConfiguration
    from dstack.core.runs import RunSpec

    client, repo_id, code_hash = uploaded_repo(server, env, "logs-bench")
    conf = TaskConfiguration(type="task", commands=[f"seq 1 {lines}"],
                             resources={"cpu": "1..", "memory": "0.1GB.."})
    started = time.perf_counter()
    run = client.runs.submit(RunSpec(configuration=conf, repo_id=repo_id, code_hash=code_hash))
    got = _read_all(client, run.name)
    end_to_end = time.perf_counter() - started
    started = time.perf_counter()
    again = _read_all(client, run.name)
    read = time.perf_counter() - started
    expected = [str(i) for i in range(1, lines + 1)]
    lost = sum(1 for a, b in zip(expected, got, strict=False) if a != b) + abs(len(expected) - len(got))
    lost += abs(len(again) - len(expected))
    return LogThroughput(lines / end_to_end, lines / read, lost)


def _read_all(client, name: str) -> list[str]:  # noqa: ANN001
    out: list[str] = []
    for event in client.runs.follow_logs(name, poll=0.05):
        out.extend(event.message.splitlines())
    return out
