"""Attach on the local backend: the job's own sshd, `ssh RUN` through dstack's SSH config (host key
pinned), sessions that land in the job (sandbox or container) with its environment, port forwarding
that survives a dropped connection, the IDE link, `inactivity_duration`, and non-members refused."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness import Env, Server, free_port, need, wait_for
from tests.registry import Registry


def _need_ssh() -> None:
    need(shutil.which("ssh") is not None and any(os.path.exists(p) for p in ("/usr/sbin/sshd", "/usr/bin/sshd")),
         "OpenSSH (ssh and sshd) is not installed")


def _running(server: Server, name: str) -> None:
    with server.api() as api:
        wait_for(lambda: api.get(f"/api/projects/main/runs/{name}").json()["status"] == "running", 60,
                 message=f"{name} to run")


def _ssh_config(env: Env) -> Path:
    return env.home / ".dstack" / "ssh" / "config"


def _ssh(env: Env, run: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(_ssh_config(env)), "-o", "BatchMode=yes", run, command],
                          capture_output=True, text=True, timeout=60, env=env.vars)


@pytest.fixture
def attach_env(env: Env) -> Env:
    _need_ssh()
    env.extra["DSTACK_METRICS_INTERVAL"] = "1"
    return env


def test_dev_environment_ssh_ports_ide_link_and_reconnect(attach_env: Env, repo: Path, server: Server) -> None:
    env = attach_env
    with server.api() as api:
        api.put("/api/projects/main/secrets/MY_SECRET", json={"value": "attach-secret-7"}).raise_for_status()
    (repo / "index.html").write_text("served-from-the-job\n")
    port = free_port()  # the job's port: the job shares this machine's network
    (repo / ".dstack.yml").write_text(
        f"type: dev-environment\nname: mydev\nide: vscode\nenv: [GREETING=hello]\nports: ['*:{port}']\n"
        f"init:\n  - python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &\n")
    assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
    _running(server, "mydev")

    # A command over SSH runs in the job: its working directory, environment and secrets, its user.
    result = env.cli("attach", "mydev", "-c", 'pwd; echo "$GREETING $MY_SECRET"; id -u; hostname', cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.split()
    assert lines[:3] == ["/workflow", "hello", "attach-secret-7"], result.stdout
    assert lines[-1] == "dstack-job"  # inside the sandbox
    if os.geteuid() == 0:
        assert lines[3] == "65534"  # as the job's unprivileged user
    config = _ssh_config(env).read_text()
    assert "Host mydev" in config and "StrictHostKeyChecking yes" in config
    # `ssh RUN` with dstack's config (the include into ~/.ssh/config is asked for at a terminal only).
    assert _ssh(env, "mydev", "cat index.html").stdout == "served-from-the-job\n"

    attach = env.popen_cli("attach", "mydev", cwd=repo)
    try:
        out = ""
        deadline = time.monotonic() + 60
        while "forwarded to localhost:" not in out and time.monotonic() < deadline:
            out += attach.stdout.readline()
        assert "vscode://vscode-remote/ssh-remote+mydev/workflow" in out, out
        local = int(re.search(rf"Port {port} is forwarded to localhost:(\d+)", out).group(1))

        def served() -> bool:
            try:
                return "served-from-the-job" in httpx.get(f"http://127.0.0.1:{local}/", timeout=2).text
            except httpx.HTTPError:
                return False
        try:
            wait_for(served, 30, message="the forwarded port")
        except AssertionError:
            procs = [" ".join(p.cmdline()) for p in psutil.Process(attach.pid).children(recursive=True)]
            raise AssertionError(f"{out}\n{procs}") from None
        # The connection drops: the forward comes back.
        forwarder = next(p for p in psutil.Process(attach.pid).children(recursive=True) if p.name() == "ssh")
        forwarder.kill()
        wait_for(lambda: any(p.pid != forwarder.pid and p.name() == "ssh"
                             for p in psutil.Process(attach.pid).children(recursive=True)), 30,
                 message="the forward to reconnect")
        wait_for(served, 30, message="the forwarded port after the reconnect")
    finally:
        attach.send_signal(signal.SIGINT)
        attach.wait(timeout=30)

    # A host key other than the one the job's agent published is refused.
    known = env.home / ".dstack" / "ssh" / "known_hosts-mydev"
    good = known.read_text()
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(env.home / "other")],
                           capture_output=True)
    assert other.returncode == 0
    host = good.split()[0]
    known.write_text(f"{host} {' '.join((env.home / 'other.pub').read_text().split()[:2])}\n")
    refused = _ssh(env, "mydev", "true")
    assert refused.returncode != 0 and "Host key verification failed" in refused.stderr
    known.write_text(good)

    # Only members of the run's project get its address.
    with server.api() as api:
        api.post("/api/users", json={"name": "outsider"}).raise_for_status()
        token = api.post("/api/users/outsider/token").json()["token"]
    with server.api(token) as other_api:
        assert other_api.get("/api/projects/main/runs/mydev/attach").status_code in (403, 404)
    assert env.cli("stop", "mydev", cwd=repo).returncode == 0


def test_inactivity_duration_stops_an_unattended_dev_environment(attach_env: Env, repo: Path,
                                                                 server: Server) -> None:
    env = attach_env
    (repo / ".dstack.yml").write_text("type: dev-environment\nname: idle-dev\ninactivity_duration: 4s\n")
    assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
    _running(server, "idle-dev")
    assert env.cli("attach", "idle-dev", "-c", "true", cwd=repo).returncode == 0
    held = subprocess.Popen(["ssh", "-F", str(_ssh_config(env)), "-N", "idle-dev"], env=env.vars)
    held_at = time.time()
    try:
        with server.api() as api:
            def sampled_later() -> dict | None:  # the agent's sample taken twice the inactivity after connecting
                metrics = api.get("/api/projects/main/runs/idle-dev/metrics").json()
                samples = metrics["samples"]
                return metrics if samples and samples[-1]["t"] > held_at + 8 else None
            metrics = wait_for(sampled_later, 60, message="a sample 8 s into the connection")
            assert metrics["ssh_inactive_for"] < 4, metrics  # an open connection keeps it attended...
            assert api.get("/api/projects/main/runs/idle-dev").json()["status"] == "running"  # ...and running
    finally:
        held.terminate()
        held.wait()
    with server.api() as api:
        run = wait_for(lambda: (r := api.get("/api/projects/main/runs/idle-dev").json())["status"] in
                       ("stopped", "terminated", "failed") and r, 60, message="the idle run to stop")
    assert run["status"] == "stopped" and run["reason"] == "inactive for 4s (no SSH connection)", run


def test_dev_environment_in_a_container(attach_env: Env, registry: Registry) -> None:
    """The shared scenario (tests/e2e/attach_scenario.py) on the local backend: the job's sshd on this
    machine, the container on the runtime's bridge network (its ports forwarded to at its address)."""
    from tests.e2e.attach_scenario import check_attach

    env = attach_env
    env.extra.update(registry.env)
    server = Server(env).start()
    try:
        with server.api() as api:
            api.put("/api/projects/main/secrets/MY_SECRET", json={"value": "boxed-secret-9"}).raise_for_status()
        image = registry.push_busybox("dstack-test/busybox:attach")
        repo = env.home / "repo"
        repo.mkdir()
        assert env.cli("init", cwd=repo).returncode == 0
        check_attach(env=env, server=server, project="main", repo=repo, image=image, run="boxed-dev",
                     secret=("MY_SECRET", "boxed-secret-9"), inactivity=8, jump=False)
    finally:
        server.stop()
