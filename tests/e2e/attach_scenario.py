"""`dstack attach` to a dev environment in a container, the same checks for every backend: the dev
environment (an image from the local registry) comes up; a session lands in its container, in its
working directory, with its secret; a port it serves is reachable at the forwarded local port and
comes back after the connection drops; on a cloud instance, its own sshd is a jump host only (the
user's key opens no session there); a changed host key is refused (job and instance); a non-member
gets no address; `inactivity_duration` stops the run once nobody is connected."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil

from tests.harness import Env, Server, wait_for

DEV_ENV = """\
type: dev-environment
name: {name}
ide: vscode
image: {image}
inactivity_duration: {inactivity}s
ports: ['*:8080']
init:
  - mkdir -p /tmp/www && echo served-from-the-container > /tmp/www/index.html
  - busybox httpd -p 8080 -h /tmp/www
{resources}"""


def ssh_config(env: Env) -> Path:
    return env.home / ".dstack" / "ssh" / "config"


def ssh(env: Env, host: str, command: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(ssh_config(env)), "-o", "BatchMode=yes", *options, host, command],
                          capture_output=True, text=True, timeout=60, env=env.vars)


def _forward_ssh(attach: subprocess.Popen[str]) -> list[psutil.Process]:
    """The attach's `ssh -N` (the forwarder), not the ProxyJump ssh it spawned."""
    try:
        return [p for p in psutil.Process(attach.pid).children(recursive=True)
                if p.name() == "ssh" and "-N" in p.cmdline()]
    except psutil.Error:
        return []


def check_attach(*, env: Env, server: Server, project: str, repo: Path, image: str, run: str,
                 secret: tuple[str, str], resources: str = "", inactivity: int = 15, jump: bool = True) -> None:
    secret_name, secret_value = secret
    (repo / ".dstack.yml").write_text(DEV_ENV.format(name=run, image=image, inactivity=inactivity,
                                                          resources=resources))
    applied = env.cli("apply", "-y", "-d", cwd=repo)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    with server.api() as api:
        wait_for(lambda: api.get(f"/api/projects/{project}/runs/{run}").json()["status"] == "running", 120,
                 interval=0.3, message=f"{run} to run")

    # Attached (held from the start: `inactivity_duration` counts while nobody is connected).
    attach = env.popen_cli("attach", run, cwd=repo)
    try:
        out = ""
        deadline = time.monotonic() + 90
        while "forwarded to localhost:" not in out and time.monotonic() < deadline and attach.poll() is None:
            out += attach.stdout.readline()
        assert f"vscode://vscode-remote/ssh-remote+{run}/workflow" in out, out
        local = int(re.search(r"Port 8080 is forwarded to localhost:(\d+)", out).group(1))
        config = ssh_config(env).read_text()
        assert f"Host {run}\n" in config
        assert (f"ProxyJump {run}-host" in config and f"Host {run}-host" in config) == jump, config
        # Through a jump host, the inner hop's key exchange is the fast classical one (it runs inside
        # the outer connection); the outer one, and a direct connection, keep the client's own.
        job_block = config.split(f"Host {run}\n", 1)[1].split("Host ", 1)[0]
        assert ("KexAlgorithms curve25519-sha256" in job_block) == jump
        if jump:
            assert "KexAlgorithms" not in config.split(f"Host {run}-host\n", 1)[1]

        def served() -> bool:
            try:
                return "served-from-the-container" in httpx.get(f"http://127.0.0.1:{local}/", timeout=2).text
            except httpx.HTTPError:
                return False
        wait_for(served, 60, message="the forwarded port")

        # A session lands in the container: its working directory, the job's secret, its files.
        result = env.cli("attach", run, "-c", f'pwd; echo "secret=${secret_name}"; ls /tmp/www', cwd=repo)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.split() == ["/workflow", f"secret={secret_value}", "index.html"], result.stdout
        assert ssh(env, run, "test -x /bin/busybox && echo in-the-image").stdout == "in-the-image\n"

        if jump:  # the instance's sshd is a jump host only: the user's key opens no session there
            on_host = ssh(env, f"{run}-host", "echo on-the-host")
            assert on_host.returncode != 0 and "on-the-host" not in on_host.stdout, on_host

        # The connection drops: the forward comes back.
        [forwarder] = wait_for(lambda: _forward_ssh(attach) or None, 30, message="the forwarder")
        forwarder.kill()
        wait_for(lambda: any(p.pid != forwarder.pid for p in _forward_ssh(attach)), 60,
                 message="the forward to reconnect")
        wait_for(served, 60, message="the forwarded port after the reconnect")

        # While attached, `ssh RUN` shares the attach's connection (no new handshake).
        control = Path(re.search(rf"Host {run}\n(?:  .*\n)*?  ControlPath (\S+)", config).group(1))
        assert control.is_socket() and control.stat().st_mode & 0o077 == 0 and control.parent.stat().st_mode & 0o077 == 0
        shared = subprocess.run(["ssh", "-F", str(ssh_config(env)), "-O", "check", run], capture_output=True,
                                text=True, env=env.vars)
        assert shared.returncode == 0 and "Master running" in shared.stderr, shared

        # Host keys other than those the agent published are refused (on a new connection): the
        # job's and the instance's.
        known = env.home / ".dstack" / "ssh" / f"known_hosts-{run}"
        good = known.read_text()
        other = env.home / f"other-{run}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        other_key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
        for alias in (run, f"{run}-host") if jump else (run,):
            known.write_text("".join(line if not line.startswith(f"{alias} ") else f"{alias} {other_key}\n"
                                     for line in good.splitlines(keepends=True)))
            refused = ssh(env, run, "echo should-not-run", "-o", "ControlPath=none")
            assert refused.returncode != 0 and "should-not-run" not in refused.stdout, alias
            assert "Host key verification failed" in refused.stderr, (alias, refused.stderr)
        known.write_text(good)

        # Only members of the run's project get its address.
        with server.api() as api:
            api.post("/api/users", json={"name": f"outsider-{run}"}).raise_for_status()
            token = api.post(f"/api/users/outsider-{run}/token").json()["token"]
        with server.api(token) as outsider:
            assert outsider.get(f"/api/projects/{project}/runs/{run}/attach").status_code in (403, 404)
        with server.api() as api:
            assert api.get(f"/api/projects/{project}/runs/{run}").json()["status"] == "running"
    finally:
        attach.send_signal(signal.SIGINT)
        attach.wait(timeout=30)

    # Nobody connected any more: `inactivity_duration` stops the run.
    with server.api() as api:
        final = wait_for(lambda: (r := api.get(f"/api/projects/{project}/runs/{run}").json())["status"] in
                         ("stopped", "terminated", "failed", "done") and r, 120, message="the idle run to stop")
    assert final["status"] == "stopped" and final["reason"] == f"inactive for {inactivity}s (no SSH connection)", final
