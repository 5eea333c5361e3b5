"""The local backend's agents are forked by a fork server (dstack/agent/forkserver.py) that the server
starts: each in a session of its own, with nothing of the fork server's channel, reaped when done; a
dead fork server is replaced, and it ends with the server while the agents run on."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import psutil

from dstack.backends.local.forkserver import ForkServer, ForkServerError
from tests.harness import Env, Server, wait_for

FINISHED = ("done", "failed", "stopped", "terminated")


def _submit(server: Server, name: str, commands: list[str]) -> None:
    spec = {"configuration": {"type": "task", "name": name, "commands": commands,
                              "resources": {"cpu": "1..", "memory": "0.1GB.."}}, "repo_id": "forkrepo"}
    with server.api() as api:
        api.post("/api/projects/main/repos", json={"repo_id": "forkrepo"}).raise_for_status()
        api.post("/api/projects/main/runs", json={"run_spec": spec}).raise_for_status()


def _status(server: Server, name: str) -> str:
    with server.api() as api:
        return api.get(f"/api/projects/main/runs/{name}").json()["status"]


def _agent_pid(env: Env, server: Server, name: str) -> int:
    with server.api() as api:
        run_id = api.get(f"/api/projects/main/runs/{name}").json()["id"]
    jobs = env.server_dir / "projects" / "main" / "bucket" / "dstack" / "runs" / "main" / run_id / "jobs"
    runner = wait_for(lambda: next(jobs.glob("*/runner.json"), None), 30, message="the agent's runner.json")
    return int(json.loads(runner.read_text())["agent_pid"])


def _fd_targets(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    targets = set()
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            targets.add(os.readlink(fd))
    return targets


def test_agents_are_forked_apart_and_outlive_the_fork_server(env: Env, server: Server) -> None:
    _submit(server, "forked", ["sleep 600"])
    wait_for(lambda: _status(server, "forked") == "running", 60, message="the run to start")
    agent = psutil.Process(_agent_pid(env, server, "forked"))
    fork_server = agent.parent()
    assert fork_server is not None
    assert fork_server.cmdline() == [sys.executable, "-m", "dstack.agent.forkserver", str(env.server_dir)]
    assert fork_server.ppid() == server.proc.pid  # the server's child, the agent's parent
    assert agent.name() == "dstack-agent"
    assert os.getsid(agent.pid) == agent.pid  # a session of its own
    # Its stdin is /dev/null, not the fork server's channel to the server; nothing else of the fork
    # server's is open in it.
    channel = os.readlink(f"/proc/{fork_server.pid}/fd/0")
    assert channel.startswith("socket:")
    assert os.readlink(f"/proc/{agent.pid}/fd/0") == "/dev/null"
    assert channel not in _fd_targets(agent.pid)

    # The fork server dies: the running agent goes on, and the next job gets a new fork server.
    fork_server.kill()
    _submit(server, "after", ["echo after"])
    wait_for(lambda: _status(server, "after") in FINISHED, 60, message="the next run to finish")
    assert _status(server, "after") == "done"
    assert agent.is_running() and agent.status() != psutil.STATUS_ZOMBIE
    forks = [p for p in server_children(server) if "dstack.agent.forkserver" in p.cmdline()]
    assert [p.pid for p in forks] != [fork_server.pid] and len(forks) == 1

    # Stopped, its agent exits and is reaped (not left a zombie of the fork server).
    with server.api() as api:
        api.post("/api/projects/main/runs/forked/stop", json={}).raise_for_status()
    wait_for(lambda: not psutil.pid_exists(agent.pid), 30, message="the stopped run's agent to be gone")

    # The server stops: its fork server ends with it.
    forks = [p for p in server_children(server) if "dstack.agent.forkserver" in p.cmdline()]
    assert len(forks) == 1
    server.stop()
    wait_for(lambda: not forks[0].is_running(), 30, message="the fork server to end with the server")


def server_children(server: Server) -> list[psutil.Process]:
    assert server.proc is not None
    return psutil.Process(server.proc.pid).children()


def test_a_fork_server_that_cannot_start_is_one_readable_error(tmp_path: Path) -> None:
    # An interpreter that cannot start (no standard library under PYTHONHOME): the fork server exits at
    # once, is tried twice, and the caller gets one line saying where its log is.
    base_env = {"PATH": os.environ["PATH"], "PYTHONHOME": str(tmp_path / "nowhere")}
    forks = ForkServer()
    try:
        forks.spawn(["--probe"], env=base_env, log=tmp_path / "agent.log", base_env=base_env,
                    server_dir=tmp_path, server_log=tmp_path / "forkserver.log")
    except ForkServerError as exc:
        assert "fork server exited" in str(exc) and str(tmp_path / "forkserver.log") in str(exc)
    else:
        raise AssertionError("a fork server that cannot start gave an agent")
    assert "PYTHONHOME" in (tmp_path / "forkserver.log").read_text()


def test_a_forked_agent_writes_its_log_and_is_reaped(tmp_path: Path) -> None:
    base_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    forks = ForkServer()
    log = tmp_path / "agent.log"
    pid, started = forks.spawn(["--probe"], env=base_env, log=log, base_env=base_env, server_dir=tmp_path,
                               server_log=tmp_path / "forkserver.log")
    assert started > 0
    probe = wait_for(lambda: log.exists() and log.read_text().strip() and json.loads(log.read_text()), 30,
                     message="the probe's answer in its log")
    assert probe["cpus"] >= 1  # what the machine has (dstack/agent/machine.py)
    assert log.stat().st_mode & 0o777 == 0o600
    wait_for(lambda: not psutil.pid_exists(pid), 30, message="the probe's process to be reaped")
    # A second agent from the same fork server (one process serves every launch).
    pid2, _ = forks.spawn(["--probe"], env=base_env, log=tmp_path / "agent2.log", base_env=base_env,
                          server_dir=tmp_path, server_log=tmp_path / "forkserver.log")
    assert pid2 != pid
    wait_for(lambda: (tmp_path / "agent2.log").exists() and (tmp_path / "agent2.log").read_text().strip(), 30,
             message="the second probe's answer")
    forks._stop()
