"""The hosts of SSH fleets as a Compute: their agents run the jobs the scheduler assigns (as on a
cloud fleet's instances); the bucket is the project's directory on the server, reached by the
agents through the server's tunnels (storage/tunnel.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import Any

from dstack.backends.base import (
    BackendContext,
    Compute,
    JobLaunch,
    LaunchedInstance,
    LaunchError,
    Requirements,
    SSHJump,
)
from dstack.backends.bootstrap import agent_package, default_image
from dstack.backends.ssh.connection import TUNNELS, SSHTarget, first_line, write_private
from dstack.backends.ssh.models import SSHFleetConfig, SSHHostData
from dstack.core.runs import Offer
from dstack.storage.local import DirectoryStorage

MIN_PYTHON = (3, 9)
# A job's own sshd listens on the host's loopback, on a port of its own (several jobs share a host).
JOB_SSH_PORTS = range(10022, 10922)


def agent_paths(instance_id: str) -> tuple[str, str]:
    """(the agent's directory, the tunnel's socket) on the host."""
    short = instance_id.replace("-", "")[:12]
    return f"/var/lib/dstack-agent/{short}", f"/tmp/dstack-{short}.sock"


def control_dir() -> Path:
    """Where the shared connections' sockets live: a short path (a socket path must fit in 108
    bytes), private to this user."""
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"dstack-cm-{os.getuid()}"


def as_root(script: str) -> str:
    """`script` as root: directly when the SSH user is root (uid 0), else through passwordless sudo."""
    q = shlex.quote(script)
    return f'if [ "$(id -u)" = 0 ]; then sh -c {q}; else sudo -n sh -c {q}; fi'


def agent_pattern(prefix: str) -> str:
    """A `pkill -f` pattern for the agent of `prefix` that does not match the shell running pkill."""
    return shlex.quote(f"[-]-instance {prefix}")


def job_ssh_port(job_id: str) -> int:
    return JOB_SSH_PORTS[int(hashlib.sha256(job_id.encode()).hexdigest(), 16) % len(JOB_SSH_PORTS)]


class SSHCompute(Compute):
    TYPE = "ssh"

    def __init__(self, config: SSHFleetConfig, ctx: BackendContext) -> None:
        self.ctx = ctx
        self.storage = DirectoryStorage(ctx.server_dir / "projects" / ctx.project / "bucket")
        self.keys_dir = ctx.server_dir / "data" / "ssh-fleets"

    def unsupported(self, requirements: Requirements) -> str | None:
        return "SSH fleet hosts are used through their fleet"

    def get_offers(self, requirements: Requirements) -> list[Offer]:
        return []  # a host is an instance already: runs take it when it is idle and fits

    def fleets_unsupported(self) -> str | None:
        return None

    def launch(self, *, job: JobLaunch, offer: Offer) -> LaunchedInstance:
        raise LaunchError("SSH fleet hosts are added by applying their fleet")

    def prepare_job(self, job: JobLaunch) -> dict[str, Any]:
        extras: dict[str, Any] = {"publish_host_keys": True}
        if job.secrets:  # fetched by the agent from the server, never through the bucket
            extras["secrets_source"] = {"type": "server"}
        if job.ssh_public_keys:
            extras["ssh"] = {"listen": "127.0.0.1", "port": job_ssh_port(job.job_id), "keys": job.ssh_public_keys}
        if not job.image:  # every job on a host of a fleet runs in a container
            extras["image"] = default_image(job.python)
        return extras

    # --- hosts -------------------------------------------------------------------------------
    def target(self, *, fleet_id: str, host: SSHHostData, private_keys: list[str]) -> SSHTarget:
        directory = self.keys_dir / fleet_id
        paths = []
        for key in private_keys:
            path = directory / f"id-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
            if not path.exists():
                write_private(path, key)
            paths.append(path)
        return SSHTarget(host=host, key_paths=tuple(paths), known_hosts=directory / "known_hosts",
                         control_dir=control_dir(), control_salt=str(self.ctx.server_dir))

    def provision_host(self, *, target: SSHTarget, instance_id: str, prefix: str, token: str,
                       server_port: int) -> dict[str, Any]:
        """Install the agent on the host (one file), check what it has, open the tunnel, start the
        agent. Returns what the machine has; raises LaunchError saying what to fix on the host."""
        h = target.host
        name = h.hostname
        check = target.run("python3 -c 'import sys; print(sys.version_info[:2])' && id -u", timeout=60)
        if check.returncode == 255:
            raise LaunchError(f"host {name}: cannot connect over SSH as {h.user}: {first_line(check.stderr)}")
        if check.returncode != 0:
            raise LaunchError(f"host {name}: python3 is missing: install Python 3.9 or newer "
                              f"({first_line(check.stderr)})")
        version_line, _, uid = check.stdout.decode().strip().rpartition("\n")
        version = tuple(int(p) for p in version_line.strip("()").split(",")[:2])
        if version < MIN_PYTHON:
            raise LaunchError(f"host {name}: python3 is {version[0]}.{version[1]}: install Python 3.9 or newer")
        if uid.strip() != "0" and target.run("sudo -n true", timeout=30).returncode != 0:
            raise LaunchError(f"host {name}: {h.user} needs passwordless sudo (the agent runs containers as root)")
        data, digest = agent_package()
        agent = f"{h.agent_dir}/agent-{digest[:16]}.pyz"
        install = target.run(as_root(f"umask 077; mkdir -p {h.agent_dir}/work && cat > {agent}.tmp && "
                                     f"mv {agent}.tmp {agent}"), stdin=data)
        if install.returncode != 0:
            raise LaunchError(f"host {name}: cannot install the agent in {h.agent_dir}: {first_line(install.stderr)}")
        try:
            return self._start_agent(target, agent=agent, instance_id=instance_id, prefix=prefix, token=token,
                                     server_port=server_port)
        except LaunchError:
            self.stop_host(target=target, instance_id=instance_id, prefix=prefix)  # leave nothing behind
            raise

    def _start_agent(self, target: SSHTarget, *, agent: str, instance_id: str, prefix: str, token: str,
                     server_port: int) -> dict[str, Any]:
        h, name, q = target.host, target.host.hostname, shlex.quote
        probe = target.run(as_root(f"python3 {agent} --probe"), timeout=120)
        try:
            machine = json.loads(probe.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise LaunchError(f"host {name}: the agent's probe failed: {first_line(probe.stderr)}") from None
        if machine.get("problems"):
            raise LaunchError(f"host {name}: " + "; ".join(machine["problems"]))
        token_file = f"{h.agent_dir}/token"
        written = target.run(as_root(f"umask 077; cat > {token_file}"), stdin=token.encode())
        if written.returncode != 0:
            raise LaunchError(f"host {name}: cannot write the agent's token: {first_line(written.stderr)}")
        TUNNELS.ensure(instance_id, target, server_port)
        why = TUNNELS.wait_ready(instance_id, target)
        if why:
            raise LaunchError(f"host {name}: {why} (the host's sshd must allow forwarding: AllowStreamLocalForwarding)")
        storage = f"tunnel://{h.socket}?token_file={token_file}"
        # An agent of an earlier install (a host given back after it stopped answering) goes first; in
        # a command of its own: the start command's own line holds the pattern pkill looks for.
        target.run(as_root(f"pkill -TERM -f {agent_pattern(prefix)} || true"), timeout=60)
        start = (f"cd {h.agent_dir} && DSTACK_INSTANCE_SSH_USER={q(h.user)} setsid nohup python3 {agent} "
                 f"--storage {q(storage)} --instance {q(prefix)} --workdir {h.agent_dir}/work "
                 f">> {h.agent_dir}/agent.log 2>&1 < /dev/null &")
        started = target.run(as_root(start), timeout=60)
        if started.returncode != 0:
            raise LaunchError(f"host {name}: cannot start the agent: {first_line(started.stderr)}")
        return machine

    def stop_host(self, *, target: SSHTarget, instance_id: str, prefix: str) -> None:
        """Stop the agent (its jobs' containers are stopped by it) and remove what was installed."""
        h = target.host
        target.run(as_root(f"pkill -TERM -f {agent_pattern(prefix)}; sleep 1; rm -rf {h.agent_dir} {h.socket}"),
                   timeout=60)
        TUNNELS.stop(instance_id)

    def terminate(self, *, instance: LaunchedInstance) -> None:
        TUNNELS.stop(instance.data.get("instance_uuid", instance.instance_id))

    def ssh_jump(self, *, instance: LaunchedInstance) -> SSHJump | None:
        host = SSHHostData.model_validate(instance.data)
        via = f"{host.proxy_jump.user}@{host.proxy_jump.hostname}:{host.proxy_jump.port}" if host.proxy_jump else None
        return SSHJump(host=host.hostname, port=host.port, user=host.user, via=via)


def machine_offer(machine: dict[str, Any], host: SSHHostData) -> Offer:
    from dstack.core.resources import InstanceResources

    gpus = [{"name": g["name"], "memory_gb": round(g.get("memory_mib", 0) / 1024, 1)}
            for g in machine.get("gpus") or []]
    resources = InstanceResources.model_validate({
        "cpus": machine["cpus"], "memory_gb": round(machine["memory_mib"] / 1024, 1), "gpus": gpus,
        "disk_gb": machine.get("disk_gb"), "spot": False})
    return Offer(backend="ssh", region="remote", instance_type=host.hostname, resources=resources, price=0.0)

