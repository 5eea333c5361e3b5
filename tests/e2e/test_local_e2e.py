"""The whole system on the local backend: a real server process, the real CLI, real agents."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from tests.harness import Env, Server, server_with_repo, wait_for

FAILING_TASK = """\
type: task
name: three
commands:
  - echo "first line"
  - echo "second line"
  - mkdir -p out && echo artifact-body > out/a.txt
  - exit 3
artifacts: [out]
resources:
  cpu: 1..
  memory: 1GB..
"""


def write(repo: Path, text: str, name: str = ".dstack.yml") -> Path:
    path = repo / name
    path.write_text(text)
    return path


def job_dir(env: Env, run_id: str) -> Path:
    runs = env.server_dir / "projects" / "main" / "bucket" / "dstack" / "runs" / "main" / run_id / "jobs"
    return next(runs.iterdir())


def check_failing_task(env: Env, server: Server, repo: Path) -> None:
    write(repo, FAILING_TASK)
    result = env.cli("apply", "-y", cwd=repo)
    assert result.returncode == 3, result.stdout + result.stderr
    out = result.stdout
    assert out.index("first line") < out.index("second line"), out
    assert "exit code 3" in out
    assert "Traceback" not in result.stderr

    ps = env.cli("ps", "-a", cwd=repo)
    assert ps.returncode == 0, ps.stderr
    row = next(line for line in ps.stdout.splitlines() if line.startswith("three"))
    assert "failed (exit code 3)" in row

    with server.api() as api:
        run = api.get("/api/projects/main/runs/three").json()
        assert run["status"] == "failed" and run["exit_code"] == 3
        artifacts = api.get("/api/projects/main/runs/three/artifacts").json()
        assert artifacts == [{"path": "out/a.txt", "size": len("artifact-body\n")}]
        body = api.get("/api/projects/main/runs/three/artifacts/out/a.txt").content
        assert body == b"artifact-body\n"
    # ...and it is in the bucket itself, where the agent put it.
    assert (job_dir(env, run["id"]) / "artifacts" / "out" / "a.txt").read_text() == "artifact-body\n"

    logs = env.cli("logs", "three", cwd=repo)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["first line", "second line"]


def test_task_failing_with_exit_code_sqlite(env: Env, server: Server, repo: Path) -> None:
    check_failing_task(env, server, repo)


@pytest.mark.postgres
def test_task_failing_with_exit_code_postgres(env: Env, postgres_url: str) -> None:
    with server_with_repo(env, postgres_url) as (server, repo):
        check_failing_task(env, server, repo)


def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            pass
    return found


LONG_TASK = """\
type: task
name: {name}
commands:
  - echo started
  - (sleep {marker} &) ; sleep {marker} & sleep {marker}
resources:
  cpu: 1..
  memory: 1GB..
"""


def test_stop_ends_run_and_kills_process_tree(env: Env, server: Server, repo: Path) -> None:
    marker = "987651"
    write(repo, LONG_TASK.format(name="sleeper", marker=marker))
    assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
    with server.api() as api:
        wait_for(lambda: api.get("/api/projects/main/runs/sleeper").json()["status"] == "running", 30,
                 message="run to start")
        wait_for(lambda: len(_processes_with(marker)) >= 3, 10, message="the job's processes")
        import time

        started = time.monotonic()
        result = env.cli("stop", "sleeper", cwd=repo)
        assert result.returncode == 0, result.stderr
        run = wait_for(lambda: (r := api.get("/api/projects/main/runs/sleeper").json())["status"] == "stopped" and r,
                       5, message="run to be stopped")
        assert time.monotonic() - started < 5
        assert run["reason"] == "stopped by user"
    wait_for(lambda: not _processes_with(marker), 3, message="the whole process tree to be gone")


def test_killed_agent_fails_run_with_instance_lost(env: Env) -> None:
    env.extra.update({"DSTACK_HEARTBEAT_TIMEOUT": "3", "DSTACK_HEARTBEAT_INTERVAL": "0.5"})
    server = Server(env).start()
    try:
        repo = env.home / "repo"
        repo.mkdir()
        assert env.cli("init", cwd=repo).returncode == 0
        marker = "987652"
        write(repo, LONG_TASK.format(name="orphan", marker=marker))
        assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
        with server.api() as api:
            run = wait_for(lambda: (r := api.get("/api/projects/main/runs/orphan").json())["status"] == "running"
                           and r, 30, message="run to start")
            runner = json.loads((job_dir(env, run["id"]) / "runner.json").read_text())
            psutil.Process(runner["agent_pid"]).kill()
            run = wait_for(lambda: (r := api.get("/api/projects/main/runs/orphan").json())["status"] == "failed"
                           and r, 3 + 5, message="run to fail")
            assert run["reason"] == "instance lost"
        # Tearing down the lost instance also killed the job the agent left behind.
        wait_for(lambda: not _processes_with(marker), 5, message="the orphaned job to be killed")
    finally:
        server.stop()


COUNTING_TASK = """\
type: task
name: counter
commands:
  - for i in $(seq 1 30); do echo "line $i"; sleep 0.1; done
resources:
  cpu: 1..
  memory: 1GB..
"""


def test_server_killed_and_restarted_job_completes(env: Env) -> None:
    server = Server(env).start()
    repo = env.home / "repo"
    repo.mkdir()
    assert env.cli("init", cwd=repo).returncode == 0
    write(repo, COUNTING_TASK)
    assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
    with server.api() as api:
        wait_for(lambda: api.get("/api/projects/main/runs/counter").json()["status"] == "running", 30,
                 message="run to start")
    server.kill()
    restarted = Server(env, port=server.port).start()
    try:
        with restarted.api() as api:
            run = wait_for(lambda: (r := api.get("/api/projects/main/runs/counter").json())["status"]
                           in ("done", "failed") and r, 30, message="run to finish")
            assert run["status"] == "done", run
        logs = env.cli("logs", "counter", cwd=repo)
        assert logs.stdout.splitlines() == [f"line {i}" for i in range(1, 31)]
    finally:
        restarted.stop()


def test_max_duration_terminates_the_run(env: Env) -> None:
    server = Server(env).start()
    try:
        repo = env.home / "repo"
        repo.mkdir()
        assert env.cli("init", cwd=repo).returncode == 0
        write(repo, LONG_TASK.format(name="bounded", marker="987653") + "max_duration: 3s\n")
        assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
        with server.api() as api:
            run = wait_for(lambda: (r := api.get("/api/projects/main/runs/bounded").json())["status"]
                           in ("terminated", "stopped", "failed", "done") and r, 30, message="the run to end")
        assert (run["status"], run["reason"]) == ("terminated", "max duration exceeded")
        wait_for(lambda: not _processes_with("987653"), 5, message="the job's processes to be gone")
    finally:
        server.stop()
