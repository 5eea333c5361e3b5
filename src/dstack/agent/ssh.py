"""SSH into a running job (`dstack attach`, `ssh RUN`, an IDE's remote SSH).

The agent starts the machine's own OpenSSH `sshd` for the job, with a configuration of its own:
key-only login with the keys of the run's user (never the server's), a host key generated for this
job and published through the bucket so that clients pin it, TCP forwarding to the machine's
loopback only (the job shares the machine's network: a port the job listens on is a port there),
and every session forced into the job (`enter.py`, copied next to the config: the agent may run
from a zipapp): its container (`exec`) or its sandbox (`nsenter`), in its working directory, as its
user, with its environment.

Where it listens: on the local backend, the address users reach the server's machine at; on a cloud
instance, 127.0.0.1:10022 only, reached through the instance's own sshd as a jump host (where the
run's user's key may open that one forward and nothing else: see backends/bootstrap.py).

It also tells how long nobody has been connected, for `inactivity_duration`.
"""

from __future__ import annotations

import getpass
import glob
import json
import os
import pkgutil
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dstack.agent.process import stop_process

if TYPE_CHECKING:
    from dstack.agent.container import Runtime
    from dstack.agent.sandbox import Sandbox

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


def find_sshd() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    return next((p for p in SSHD_CANDIDATES if os.path.exists(p)), None)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SSHServer:
    """One job's sshd."""

    def __init__(self, workdir: Path, *, listen: str, port: int | None = None) -> None:
        self.dir = workdir / "ssh"
        self.listen = listen
        self.port = port or free_port(listen)
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_connected = time.time()  # a fresh job counts as just attended

    def start(self, *, authorized_keys: list[str], forward_hosts: tuple[str, ...] = ()) -> str:
        """Start sshd; return its host public key (`ssh-ed25519 AAAA…`). Forwards may reach the
        machine's loopback and `forward_hosts` (a container's address on its bridge network)."""
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError("OpenSSH's sshd is not installed on this machine")
        self.dir.mkdir(mode=0o700, exist_ok=True)
        key = self.dir / "host_ed25519"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dstack-job", "-f", str(key)],
                           check=True, capture_output=True)
        (self.dir / "authorized_keys").write_text("".join(k.strip() + "\n" for k in authorized_keys))
        os.chmod(self.dir / "authorized_keys", 0o600)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        enter = self.dir / "enter.py"
        enter.write_bytes(pkgutil.get_data("dstack.agent", "enter.py") or b"")
        permit = " ".join(["localhost:*", "127.0.0.1:*", *(f"{h}:*" for h in forward_hosts)])
        config = self.dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", f"ListenAddress {self.listen}", f"HostKey {key}",
            f"PidFile {self.dir / 'sshd.pid'}", f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", "PermitUserEnvironment no",
            # Forwards reach the job's ports only: the machine's loopback (a job on the host network) or
            # its container's address.
            "AllowTcpForwarding local", f"PermitOpen {permit}", "GatewayPorts no",
            "X11Forwarding no", "AllowAgentForwarding no", "PermitTunnel no", "ClientAliveInterval 15",
            # -I -S: no site packages to scan for a session's start (enter.py is stdlib only).
            f"ForceCommand {sys.executable} -I -S {enter} {self.dir.parent}",
            "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "sshd.log", "ab"),  # noqa: SIM115
                                     start_new_session=True)
        return " ".join((self.dir / "host_ed25519.pub").read_text().split()[:2])

    def wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.listen, self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def connections(self) -> int:
        """Established TCP connections to this sshd (from /proc/net/tcp, tcp6)."""
        return established(self.port)

    def inactive_for(self) -> float:
        if self.connections():
            self.last_connected = time.time()
        return time.time() - self.last_connected

    def stop(self) -> None:
        stop_process(self.proc)


def established(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    # local address "IP:PORT" in hex; state 01 = ESTABLISHED
                    if len(fields) > 3 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        count += 1
        except (OSError, StopIteration, ValueError):
            continue
    return count


def session_spec(*, container: tuple[str, str] | None, sandbox_pid: int | None, ids: tuple[int, int] | None,
                 cwd: str, shell: str, user: str | None) -> dict[str, Any]:
    """What `dstack.agent.enter` needs to put a session into the job (written to the job's workdir)."""
    if container is not None:
        return {"kind": "container", "runtime": container[0], "name": container[1], "cwd": cwd, "shell": shell,
                "user": user}
    if sandbox_pid is not None:
        return {"kind": "sandbox", "pid": sandbox_pid, "uid": ids[0] if ids else None,
                "gid": ids[1] if ids else None, "cwd": cwd, "shell": shell}
    return {"kind": "host", "cwd": cwd, "shell": shell}


def start_job_sshd(workdir: Path, ssh: dict[str, Any], *, container: tuple[Runtime, str] | None,
                   sandbox: Sandbox | None, job_pid: int | None, cwd: str, shell: str, user: str | None,
                   env: dict[str, str]) -> tuple[SSHServer, dict[str, Any]]:
    """Start the job's sshd for the keys in `ssh` and write how sessions enter the job; return the
    server and what to publish (ssh.json). Raises OSError/RuntimeError if it cannot serve."""
    server = SSHServer(workdir, listen=str(ssh.get("listen") or "127.0.0.1"),
                       port=int(ssh["port"]) if ssh.get("port") else None)
    # A container on the runtime's bridge network has its ports at its own address.
    forward_host = (container[0].address(container[1]) if container is not None else None) or "localhost"
    host_key = server.start(authorized_keys=list(ssh.get("keys") or []),
                            forward_hosts=(forward_host,) if forward_host != "localhost" else ())
    session = session_spec(container=(container[0].binary, container[1]) if container else None,
                           sandbox_pid=job_pid if sandbox else None, ids=sandbox.uid_gid() if sandbox else None,
                           cwd=cwd, shell=shell, user=user)
    # A container's sessions get its own environment (`exec`); others get the job's, secrets included.
    for name, data in (("session.json", session), ("session-env.json", {} if container else env)):
        fd = os.open(server.dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
    if not server.wait_ready():
        server.stop()
        raise RuntimeError((server.dir / "sshd.log").read_text()[-300:] or "sshd did not start")
    return server, {"host": server.listen, "port": server.port, "user": getpass.getuser(),
                    "host_keys": [host_key], "forward_host": forward_host}


def instance_host_keys() -> list[str]:
    """The machine's own SSH host keys (`ssh-ed25519 AAAA…`), as its sshd presents them."""
    keys = []
    for path in sorted(glob.glob("/etc/ssh/ssh_host_*_key.pub")):
        with open(path) as f:
            parts = f.read().split()
        if len(parts) >= 2:
            keys.append(f"{parts[0]} {parts[1]}")
    return keys


def jump_key_line(public_key: str, port: int) -> str:
    """An authorized_keys line for the instance's default user: this key may open a forward to the
    job's sshd on the instance's loopback, and nothing else (no shell, no other forward)."""
    # `restrict` alone would still run a command; the forced one refuses every session.
    return (f'restrict,port-forwarding,permitopen="127.0.0.1:{port}",permitopen="localhost:{port}",'
            f'command="/bin/false" {" ".join(public_key.split()[:2])}')


def authorize_jump_keys(keys: list[str], port: int, user: str | None) -> None:
    """On a fleet instance, for a job assigned after boot: its user's keys as jump-only keys of the
    instance's default user (the user data did the same for the keys known at launch)."""
    import pwd  # noqa: PLC0415 - POSIX only, like everything that runs on instances

    if not keys or not user:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return
    ssh_dir = os.path.join(entry.pw_dir, ".ssh")
    path = os.path.join(ssh_dir, "authorized_keys")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    existing: list[str] = []
    if os.path.exists(path):
        with open(path) as f:
            existing = f.read().splitlines()
    new = [line for line in (jump_key_line(k, port) for k in keys) if line not in existing]
    if new:
        with open(path, "a") as f:
            f.write("".join(line + "\n" for line in new))
    for target in (ssh_dir, path):
        os.chown(target, entry.pw_uid, entry.pw_gid)
    os.chmod(path, 0o600)
