"""The server's own figures: start (fresh and warm), list-runs throughput and tail latency, dispatch
rate with the server's CPU per job, and log throughput end to end."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
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
    log_path = cwd / f"server-start-{port}.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        ps = psutil.Process(proc.pid)
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{command[0]} exited with {proc.returncode} before answering:\n"
                                     f"{log_path.read_text(errors='replace')[-3000:]}")
            if health(port):
                wall = time.perf_counter() - started
                times = ps.cpu_times()
                return Start(wall, times.user + times.system)
            time.sleep(0.01)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGINT to the server's process group (as Ctrl-C), SIGKILL if it is not gone in 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def answers(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def ours_health(port: int) -> bool:
    return answers(f"http://127.0.0.1:{port}/api/health")


def ours_start_command(port: int) -> list[str]:
    return [sys.executable, "-m", "dstack.cli.main", "server", "--port", str(port), "--log-level", "warning"]


def bench_server_start(tmp: Path, rounds: int = 5) -> tuple[Start, Start, Start]:
    """(fresh, warm, warm to a first API answer) medians: a new HOME (the database created and
    migrated), then the same again; then again, until an authenticated `GET …/runs` (what `dstack ps`
    asks) answers: the health check needs none of the API's routers, that request builds its own."""
    fresh: list[Start] = []
    warm: list[Start] = []
    api: list[Start] = []
    for i in range(rounds):
        home = tmp / f"start-{i}"
        home.mkdir()
        user = Env(home=home)
        for samples in (fresh, warm):
            port = free_port()
            samples.append(time_start(ours_start_command(port), user.vars, ours_health, port, home))
        headers = {"Authorization": f"Bearer {user.token()}"}

        def runs_answer(port: int, headers: dict[str, str] = headers) -> bool:
            return answers(f"http://127.0.0.1:{port}/api/projects/main/runs", headers)

        port = free_port()
        api.append(time_start(ours_start_command(port), user.vars, runs_answer, port, home))
    return median_start(fresh), median_start(warm), median_start(api)


def median_start(samples: list[Start]) -> Start:
    return Start(statistics.median(s.wall for s in samples), statistics.median(s.cpu for s in samples))


def bench_list_runs(server: Server, env: Env, connections: int, limit: int = 100) -> Load:
    """`GET …/runs?all=true&limit=N` (1,000 runs stored): the newest page, as `dstack ps -a` asks it."""
    url = f"{server.url}/api/projects/main/runs?all=true&limit={limit}"
    return measure(url, connections, {"Authorization": f"Bearer {env.token()}"})


@dataclass
class Dispatch:
    jobs_per_s: float  # submitted → dispatched (an agent started for it), wall
    server_cpu_ms_per_job: float  # the server process's own CPU over that time, per job
    machine_cpu_ms_per_job: float  # every process's (the agents', this client's), per job
    all_done_s: float


def _job_counts(db: Path) -> dict[str, int]:
    """Jobs by status, read from the server's SQLite file (WAL: a reader does not block the server),
    so that watching costs the server nothing."""
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        counts = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
        counts["launched"] = conn.execute("SELECT count(*) FROM jobs WHERE instance_id IS NOT NULL").fetchone()[0]
        return counts


def bench_dispatch(server: Server, env: Env, count: int = 300) -> Dispatch:
    """`count` one-line tasks submitted at once (8 client threads): jobs dispatched per second from the
    first submit (claimed, offer chosen, job staged, agent started), the server's own CPU per job, and
    the whole machine's (the jobs' agents are processes of their own)."""
    from dstack.core.configurations import TaskConfiguration
    from dstack.core.runs import RunSpec

    client, repo_id, code_hash = uploaded_repo(server, env, "dispatch")
    conf = TaskConfiguration(type="task", commands=["true"], resources={"cpu": "1..", "memory": "0.1GB.."})
    db = env.server_dir / "data" / "sqlite.db"
    ps = psutil.Process(server.proc.pid)
    before, machine_before = ps.cpu_times(), psutil.cpu_times()
    started = time.perf_counter()

    def submit(i: int) -> None:
        client.runs.submit(RunSpec(configuration=conf, repo_id=repo_id, code_hash=code_hash, run_name=f"dispatch-{i}"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(submit, range(count)))
    wait_for(lambda: _job_counts(db)["launched"] >= count, 600, interval=0.02, message="every job dispatched")
    elapsed = time.perf_counter() - started
    after, machine_after = ps.cpu_times(), psutil.cpu_times()
    wait_for(lambda: sum(n for status, n in _job_counts(db).items()
                         if status in ("done", "failed", "stopped", "terminated")) >= count,
             600, interval=0.2, message="every job done")
    server_cpu = (after.user + after.system) - (before.user + before.system)
    machine_cpu = ((machine_after.user + machine_after.system) - (machine_before.user + machine_before.system))
    return Dispatch(count / elapsed, server_cpu * 1000 / count, machine_cpu * 1000 / count,
                    time.perf_counter() - started)


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
