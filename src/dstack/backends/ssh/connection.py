"""The server's SSH connections to the hosts of SSH fleets, with the machine's own `ssh`: commands
(over one shared connection per host) and the tunnel that forwards the agent's Unix socket on the
host to the server's HTTP port. Host keys are pinned per fleet: the first connection records the
host's key (as `ssh` does with accept-new), later ones must present the same."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dstack.backends.ssh.models import SSHHostData

CONNECT_TIMEOUT = 15


@dataclass(frozen=True)
class SSHTarget:
    host: SSHHostData
    key_paths: tuple[Path, ...]  # the host's (and its jump host's) private keys, 0600, in the server's data dir
    known_hosts: Path
    control_dir: Path
    control_salt: str = ""  # the server's own: two servers on one machine never share a connection

    def base_args(self, *, shared: bool = True) -> list[str]:
        h = self.host
        keys = [arg for path in self.key_paths for arg in ("-i", str(path))]
        common = [*keys, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                  "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
                  "-o", f"ConnectTimeout={CONNECT_TIMEOUT}", "-o", "ServerAliveInterval=10",
                  "-o", "ServerAliveCountMax=3", "-F", "/dev/null"]
        args = ["ssh", *common, "-p", str(h.port)]
        if h.proxy_jump is not None:
            j = h.proxy_jump
            jump = " ".join(shlex.quote(a) for a in ["ssh", *common, "-p", str(j.port), "-W", "%h:%p",
                                                     f"{j.user}@{j.hostname}"])
            args += ["-o", f"ProxyCommand={jump}"]
        if shared:  # one connection per host for the many short commands; the tunnel has its own
            digest = hashlib.sha256(f"{self.control_salt}\0{h.user}@{h.hostname}:{h.port}\0{self.key_paths}"
                                    .encode()).hexdigest()[:16]
            args += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir / digest}",
                     "-o", "ControlPersist=120"]
        return [*args, f"{h.user}@{h.hostname}"]

    def run(self, command: str, *, stdin: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        self.control_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return subprocess.run([*self.base_args(), command], input=stdin, capture_output=True, timeout=timeout,
                              start_new_session=True)


def first_line(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Warning: Permanently added")]
    return lines[-1][:300] if lines else ""


class Tunnels:
    """One `ssh -N -R SOCKET:127.0.0.1:PORT` per live SSH fleet instance, restarted when it exits
    (a network blip, a host reboot, a server restart)."""

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def ensure(self, instance_id: str, target: SSHTarget, server_port: int) -> bool:
        """Start the tunnel unless it runs; True if it was (re)started."""
        with self._lock:
            proc = self._procs.get(instance_id)
            if proc is not None and proc.poll() is None:
                return False
            args = [*target.base_args(shared=False)[:-1], "-N", "-o", "ExitOnForwardFailure=yes",
                    "-o", "StreamLocalBindUnlink=yes", "-R", f"{target.host.socket}:127.0.0.1:{server_port}",
                    f"{target.host.user}@{target.host.hostname}"]
            self._procs[instance_id] = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.PIPE, start_new_session=True)
            return True

    def wait_ready(self, instance_id: str, target: SSHTarget, timeout: float = 30) -> str | None:
        """None once the socket exists on the host, else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self._procs.get(instance_id)
            if proc is not None and proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else b""
                return f"the tunnel to {target.host.hostname} ended: {first_line(err) or f'exit {proc.returncode}'}"
            if target.run(f"test -S {shlex.quote(target.host.socket)}", timeout=30).returncode == 0:
                return None
            time.sleep(0.2)
        return f"the tunnel to {target.host.hostname} did not come up in {timeout:.0f}s"

    def stop(self, instance_id: str) -> None:
        with self._lock:
            proc = self._procs.pop(instance_id, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()

    def stop_all(self) -> None:
        for instance_id in list(self._procs):
            self.stop(instance_id)


TUNNELS = Tunnels()


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
