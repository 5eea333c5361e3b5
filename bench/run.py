"""Benchmarks of the foundation, on the local backend. Prints a table of figures and targets.

    make bench      (or: .venv/bin/python bench/run.py)

Each benchmark starts its own `dstack server` with a temporary HOME, so nothing of yours is touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import Env, Server  # noqa: E402

from bench.server import bench_list_runs  # noqa: E402
from dstack.core.configurations import TaskConfiguration  # noqa: E402
from dstack.core.runs import RunSpec  # noqa: E402

RESULTS: list[tuple[str, str, str, bool]] = []


def record(name: str, value: float, unit: str, target: float) -> None:
    shown = f"{value:.3f} {unit}" if unit == "s" else f"{value:.2f} {unit}" if unit == "ms" else f"{value:.0f} {unit}"
    RESULTS.append((name, shown, f"≤ {target:g} {unit}",
                    value <= target))


def bench_first_log_line(server: Server, env: Env) -> None:
    from bench.common import uploaded_repo

    client, repo_id, code_hash = uploaded_repo(server, env, "repo")
    conf = TaskConfiguration(type="task", commands=["echo hello", "sleep 1"],
                             resources={"cpu": "1..", "memory": "1GB.."})
    samples = []
    for _ in range(20):
        started = time.perf_counter()
        run = client.runs.submit(RunSpec(configuration=conf, repo_id=repo_id, code_hash=code_hash))
        while not client.runs.logs(run.name).events:
            time.sleep(0.005)
        samples.append(time.perf_counter() - started)
        while not client.runs.get(run.name).status.finished:
            time.sleep(0.05)
    record("submit → first log line via API (median of 20)", statistics.median(samples), "s", 1.0)


def fill_runs(env: Env, count: int) -> None:
    """Insert finished runs straight into the DB: the benchmark is about listing them."""
    from dstack.server.db import Database
    from dstack.server.models import JobModel, ProjectModel, RunModel, UserModel
    from dstack.server.settings import Settings

    async def _fill() -> None:
        db = Database(Settings(server_dir=env.server_dir))
        async with db.session() as session:
            from sqlalchemy import select

            project = await session.scalar(select(ProjectModel).where(ProjectModel.name == "main"))
            user = await session.scalar(select(UserModel).where(UserModel.name == "admin"))
            conf = TaskConfiguration(type="task", commands=["echo hi"])
            base = datetime.now(UTC) - timedelta(days=2)
            for i in range(count):
                name = f"bench-{i}"
                spec = RunSpec(configuration=conf, repo_id="bench", run_name=name).model_dump_json()
                at = base + timedelta(seconds=i)
                run = RunModel(id=str(uuid.uuid4()), project_id=project.id, user_id=user.id, name=name,
                               status="done", spec=spec, submitted_at=at, finished_at=at, exit_code=0)
                session.add(run)
                session.add(JobModel(run_id=run.id, name=f"{name}-0-0", status="done", submitted_at=at,
                                     started_at=at, finished_at=at, storage_prefix=f"x/{i}", exit_code=0,
                                     history=json.dumps([])))
            await session.commit()
        await db.close()

    asyncio.run(_fill())


BENCH_IMAGE = "localhost/dstack-bench/busybox:1"
# What Debian's podman needs as root where crun refuses a hybrid cgroup layout (see docs/backends.md).
DEBIAN_ROOT_PODMAN_ARGS = "--runtime runc --cgroup-manager=cgroupfs --ulimit nofile=1024:1024 --ulimit nproc=1024:1024"


def container_run_args(runtime: str) -> str | None:
    """Extra `run` arguments this machine's runtime needs (None if it cannot run the bench image)."""
    import subprocess

    for args in [os.environ.get("DSTACK_CONTAINER_RUN_ARGS", ""), DEBIAN_ROOT_PODMAN_ARGS]:
        probe = [runtime, "run", "--rm", *args.split(), BENCH_IMAGE, "/bin/true"]
        if subprocess.run(probe, capture_output=True, timeout=120).returncode == 0:
            return args
    return None


def bench_image_first_line(tmp: Path) -> None:
    """`dstack apply -y` of an `image` task (image cached) → its first log line, on the local backend."""
    import shutil
    import subprocess

    from dstack.agent.container import find_runtime

    runtime = find_runtime()
    name = "local: `apply -y` of an image task (cached) → first log line (median of 5)"
    if runtime is None or not Path("/bin/busybox").exists():
        RESULTS.append((name, "skipped: needs Docker or Podman and busybox-static", "≤ 1.5 s", True))
        return
    root = tmp / "bench-image"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "echo", "true"):
        (root / "bin" / applet).symlink_to("busybox")
    tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True).stdout
    subprocess.run([runtime, "import", "-", BENCH_IMAGE], input=tar, capture_output=True, check=True)
    args = container_run_args(runtime)
    if args is None:
        RESULTS.append((name, f"skipped: {runtime} cannot run containers here", "≤ 1.5 s", True))
        return
    home = tmp / "image-home"
    home.mkdir()
    env = Env(home=home, extra={"DSTACK_CONTAINER_RUN_ARGS": args})
    server = Server(env).start()
    try:
        record(name, apply_to_first_line(env, "repo", f"image: {BENCH_IMAGE}\n"), "s", 1.5)
    finally:
        server.stop()


def apply_to_first_line(env: Env, repo_name: str, extra: str = "", runs: int = 5) -> float:
    """Median seconds from `dstack apply -y` of a one-line task (plus `extra` YAML) to its line."""
    import subprocess

    repo = env.home / repo_name
    repo.mkdir()
    assert env.cli("init", cwd=repo).returncode == 0
    samples = []
    for i in range(runs):
        (repo / ".dstack.yml").write_text(f"type: task\nname: first-{i}\n{extra}commands: [echo first-line]\n"
                                          "resources: {cpu: 1.., memory: 0.1GB..}\n")
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "dstack.cli.main", "apply", "-y"], cwd=repo,
                                env=env.vars, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "first-line":
                samples.append(time.perf_counter() - started)
                break
        proc.wait(timeout=120)
    return statistics.median(samples)


def time_cli(env: Env, *args: str, repeat: int = 7) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = env.cli(*args)
        samples.append(time.perf_counter() - started)
        assert result.returncode == 0, result.stderr
    return statistics.median(samples)


def run_aws_benchmarks(tmp: Path) -> None:
    try:
        import moto  # noqa: F401 - the AWS stand-in (a test extra)
    except ImportError:
        RESULTS.append(("AWS benchmarks", "skipped: needs moto (`make test` installs the test extras)",
                        "(see docs/benchmarks.md)", True))
        return
    from tests.aws_harness import MotoAWS
    from tests.vmhost import can_run_vm_hosts

    from bench.aws import bench_plan_all_regions, bench_vm_bootstrap

    aws = MotoAWS()
    try:
        record("AWS: plan `gpu: 24GB..` over all 22 regions, warm (median of 20)",
               bench_plan_all_regions(aws, tmp), "s", 0.2)
        ok, why = can_run_vm_hosts()
        if ok:
            home = tmp / "boot-home"
            home.mkdir()
            boot, attach = bench_vm_bootstrap(aws, Env(home=home))
            record("AWS: VM bootstrap on the stock tree, user-data start → job running in its container "
                   "(image cached; median of 5)", boot, "s", 10)
            record("AWS: `dstack attach RUN -c true` → output on a VM host, through its sshd (median of 7)",
                   attach, "s", 1.0)
        else:
            RESULTS.append(("AWS: VM bootstrap", f"skipped: {why}", "≤ 10 s", True))
    finally:
        aws.stop()


def bench_browser_logs(server: Server, env: Env) -> None:
    from bench.ui import bench_million_log_lines

    name = "run page, 1,000,000 log lines: open → last line shown (Chromium)"
    figures = bench_million_log_lines(server, env)
    if isinstance(figures, str):
        RESULTS.append((name, figures, "≤ 10 s", figures.startswith("skipped")))
        return
    record(name, figures["loaded"], "s", 10)
    record("… the page's slowest answer to a script call while the lines arrive", figures["worst_round_trip"],
           "s", 0.5)
    record("… Home key → the first line shown", figures["to_top"], "s", 0.5)
    RESULTS.append(("… lines in the page's DOM (the rest are kept in memory)", f"{figures['in_page']:.0f}",
                    "(no target)", True))


def run_server_benchmarks(server: Server, env: Env) -> None:
    from bench.server import bench_dispatch, bench_logs

    dispatch = bench_dispatch(server, env)
    RESULTS.append(("dispatch 300 local one-line tasks: jobs/s, submit → agent started (wall)",
                    f"{dispatch.jobs_per_s:.1f}", "(bound by this machine's CPUs: see below)", True))
    record("… the server's own CPU per job (50 jobs/s of one core = 20 ms)", dispatch.server_cpu_ms_per_job,
           "ms", 20)
    RESULTS.append(("… every process's CPU per job (the agents', the client's)",
                    f"{dispatch.machine_cpu_ms_per_job:.0f} ms", "(no target)", True))
    logs = bench_logs(server, env)
    RESULTS.append(("200,000 log lines: submit → all returned through the API, lines/s",
                    f"{logs.lines_per_s:,.0f}", "≥ 50,000, 0 lost", logs.lines_per_s >= 50_000 and logs.lost == 0))
    RESULTS.append(("… read again (the stored lines alone), lines/s; lines lost",
                    f"{logs.read_lines_per_s:,.0f}; {logs.lost}", "(no target)", True))


def run_start_benchmarks(tmp: Path) -> None:
    from bench.server import bench_server_start

    fresh, warm, api = bench_server_start(tmp)
    record("server start → answers, fresh (a new database; median of 5), wall", fresh.wall, "s", 1.0)
    RESULTS.append(("… CPU seconds", f"{fresh.cpu:.2f}", "(no target)", True))
    record("server start → answers, warm (median of 5), wall", warm.wall, "s", 0.6)
    RESULTS.append(("… CPU seconds", f"{warm.cpu:.2f}", "(no target)", True))
    RESULTS.append(("… warm start → first API answer (`GET …/runs`, its router built then), wall",
                    f"{api.wall:.3f} s", "(no target)", True))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        run_start_benchmarks(Path(tmp))
        home = Path(tmp) / "home"
        home.mkdir()
        env = Env(home=home, extra={"DSTACK_WORKER_INTERVAL": "1"})  # the server's own pace
        server = Server(env).start()
        try:
            time.sleep(3)
            rss = psutil.Process(server.proc.pid).memory_info().rss / 2**20
            record("server RSS, idle after start", rss, "MB", 150)
            bench_first_log_line(server, env)
            record("local: `dstack apply -y` of a task → its first log line (median of 5)",
                   apply_to_first_line(env, "apply-bench"), "s", 1.0)
            from bench.attach import bench_attach

            attach_s, throughput = bench_attach(server, env)
            record("`dstack attach RUN -c true` → output, run already running (median of 7)", attach_s, "s", 1.0)
            RESULTS.append(("port forward through the SSH tunnel on loopback (64 MB)", f"{throughput:.0f} MB/s",
                            "(no target)", True))
            from bench.proxy import bench_proxy

            proxy = bench_proxy(server, env)
            tool = "wrk" if proxy["wrk"] else "a Python client"
            for connections in (4, 32):
                record(f"service proxy: p50 added to a direct request, {connections} connections ({tool})",
                       proxy[f"c{connections}_p50_added_ms"], "ms", 2.0)
                RESULTS.append((f"… p99 added, {connections} connections (direct p99 "
                                f"{proxy[f'c{connections}_p99_direct_ms']:.2f} ms)",
                                f"{proxy[f'c{connections}_p99_added_ms']:.2f} ms", "(no target)", True))
                RESULTS.append((f"… requests/s through the proxy, {connections} connections (direct "
                                f"{proxy[f'c{connections}_direct_rps']:.0f})", f"{proxy[f'c{connections}_rps']:.0f}",
                                "(no target)", True))
            run_server_benchmarks(server, env)
            fill_runs(env, 1000)
            record("`dstack ps` with 1,000 runs in the DB (median of 7)", time_cli(env, "ps"), "s", 0.3)
            for connections in (4, 16):
                load = bench_list_runs(server, env, connections)
                RESULTS.append((f"list runs (a page of 100 of 1,000), {connections} connections ({load.tool}): "
                                "requests/s", f"{load.rps:.0f}", "≥ 2× 38 (before #16) at 4" if connections == 4
                                else "(no target)", load.rps >= 76 or connections != 4))
                if connections == 4:
                    record("… p99, 4 connections", load.p99_ms, "ms", 50)
                else:
                    RESULTS.append(("… p99, 16 connections", f"{load.p99_ms:.1f} ms", "(no target)", True))
            RESULTS.append(("`dstack ps -a` listing all 1,000 runs (median of 7)",
                            f"{time_cli(env, 'ps', '-a'):.3f} s", "(no target)", True))
            time.sleep(3)
            rss = psutil.Process(server.proc.pid).memory_info().rss / 2**20
            record("server RSS, idle after the load above", rss, "MB", 150)
            bench_browser_logs(server, env)
        finally:
            server.stop()
        bench_image_first_line(Path(tmp))
        run_aws_benchmarks(Path(tmp))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dstack benchmarks ({os.cpu_count()} CPUs, local backend)")
    for column in ("benchmark", "measured", "target", "ok"):
        table.add_column(column)
    for name, value, target, ok in RESULTS:
        table.add_row(name, value, target, "yes" if ok else "[red]NO[/]")
    Console(width=120).print(table)
    return 0 if all(ok for *_, ok in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
