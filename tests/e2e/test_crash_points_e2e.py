"""The server dies (as with `kill -9`) at each step of submit → claim → launch → record → running →
finish, and is started again: the job ends right, its logs and artifacts are there, nothing runs that
the database does not know about, and `dstack stop` works at every point.

DSTACK_FAILPOINT=<step> is the test facility that makes the server exit at that step.
"""

from __future__ import annotations

import httpx
import psutil
import pytest

from dstack.server.failpoints import STEPS
from tests.harness import Env, Server, run_logs, wait_for

FINISHED = ("done", "failed", "stopped", "terminated")


def _agents(env: Env) -> list[psutil.Process]:
    """Agent processes of this server: forked by its fork server (named `dstack-agent`, with the fork
    server's command line, which names the server's directory), or started as `-m dstack.agent` (whose
    --storage URL names it)."""
    marker = str(env.server_dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "name"]):
        cmdline = proc.info["cmdline"] or []
        forked = proc.info["name"] == "dstack-agent" and "dstack.agent.forkserver" in cmdline
        if ("dstack.agent" in cmdline or forked) and any(marker in part for part in cmdline):
            found.append(proc)
    return found


def _submit(server: Server, repo_id: str, name: str, commands: list[str]) -> None:
    spec = {"configuration": {"type": "task", "name": name, "commands": commands, "artifacts": ["out"],
                              "resources": {"cpu": "1..", "memory": "0.1GB.."}}, "repo_id": repo_id}
    try:
        with server.api() as api:
            api.post("/api/projects/main/repos", json={"repo_id": repo_id}).raise_for_status()
            api.post("/api/projects/main/runs", json={"run_spec": spec})
    except httpx.HTTPError:
        pass  # the server died answering (after-submit)


def _crash_at(env: Env, step: str) -> Server:
    env.extra.update({"DSTACK_FAILPOINT": step, "DSTACK_CLAIM_LEASE": "2", "DSTACK_WORKER_INTERVAL": "0.5"})
    server = Server(env).start()
    return server


def _restart(env: Env, crashed: Server) -> Server:
    assert crashed.proc is not None
    crashed.proc.wait(timeout=60)
    assert crashed.proc.returncode == 137, crashed.output()[-3000:]
    env.extra.pop("DSTACK_FAILPOINT")
    return Server(env, port=crashed.port).start()


@pytest.mark.parametrize("step", STEPS)
def test_job_survives_a_crash_at_every_step(env: Env, step: str) -> None:
    crashed = _crash_at(env, step)
    _submit(crashed, "crashrepo", "crashy", ["echo START", "sleep 3", "mkdir -p out", "echo kept > out/a.txt",
                                              "echo END"])
    server = _restart(env, crashed)
    try:
        with server.api() as api:
            status = wait_for(lambda: (r := api.get("/api/projects/main/runs/crashy").json())["status"] in FINISHED
                              and r["status"], timeout=120, message=f"the run to finish after a crash at {step}")
            run = api.get("/api/projects/main/runs/crashy").json()
            assert status == "done", run
            logs = run_logs(api, "crashy")
            assert logs.count("START") == 1 and "END" in logs, logs  # ran exactly once, to the end
            artifacts = api.get("/api/projects/main/runs/crashy/artifacts").json()
            assert [a["path"] for a in artifacts] == ["out/a.txt"]
        wait_for(lambda: not _agents(env), timeout=30, message="no agent left running")
    finally:
        server.stop()


@pytest.mark.parametrize("step", ["after-claim", "after-launch"])
def test_stop_works_after_a_crash(env: Env, step: str) -> None:
    crashed = _crash_at(env, step)
    _submit(crashed, "crashrepo", "longy", ["echo START", "sleep 600"])
    server = _restart(env, crashed)
    try:
        if step == "after-launch":  # launched before the crash: its agent runs on (and is found here)
            assert _agents(env), "the agent launched before the crash is gone"
        with server.api() as api:
            response = api.post("/api/projects/main/runs/longy/stop", json={})
            assert response.status_code == 200, response.text
            status = wait_for(lambda: (r := api.get("/api/projects/main/runs/longy").json())["status"] in FINISHED
                              and r["status"], timeout=120, message=f"the stop to take effect after {step}")
            assert status == "stopped", api.get("/api/projects/main/runs/longy").json()
        wait_for(lambda: not _agents(env), timeout=30, message="no agent left running")
    finally:
        server.stop()
