"""How the proxy reaches a replica: directly where the job runs on this machine (local), else through
an `ssh -N -L` the server keeps to the job's own sshd, jumping through the instance's sshd, host keys
pinned to what the agents published (no port of the instance is opened to anyone)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from dstack.agent.process import stop_process
from dstack.core.hostkeys import write_known_hosts_entries


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Tunnel:
    """`ssh -N -L 127.0.0.1:PORT:TARGET` to one replica; `ensure()` restarts it when it has exited."""

    def __init__(self, *, workdir: Path, key: Path, own: dict[str, Any], jump: dict[str, Any] | None,
                 app_port: int) -> None:
        self.workdir, self.key, self.own, self.jump, self.app_port = workdir, key, own, jump, app_port
        self.local_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = self.next_start = 0.0
        self.backoff = 0.5
        self.config = self._write_config()

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        entries = [("replica", list(self.own.get("host_keys") or []))]
        if self.jump is not None:
            entries.append(("replica-host", list(self.jump.get("host_keys") or [])))
        known = write_known_hosts_entries(self.workdir / "known_hosts", entries)
        common = [f"  IdentityFile {self.key}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {known}",
                  "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes", "  CheckHostIP no",
                  "  BatchMode yes", "  ServerAliveInterval 10", "  ServerAliveCountMax 3", "  ConnectTimeout 15"]
        lines = ["Host replica", f"  HostName {self.own['host']}", f"  Port {self.own['port']}",
                 f"  User {self.own['user']}", "  HostKeyAlias replica", *common]
        if self.jump is not None:
            lines += ["  ProxyJump replica-host", "Host replica-host", f"  HostName {self.jump['host']}",
                      f"  Port {self.jump.get('port') or 22}", f"  User {self.jump['user']}",
                      "  HostKeyAlias replica-host", *common]
            if self.jump.get("via"):
                lines.append(f"  ProxyJump {self.jump['via']}")
        path = self.workdir / "config"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.local_port

    def ensure(self) -> None:
        """Started, or started again if it has exited: at once the first times, then backing off to
        one try every 10 s while it keeps failing (a refused key, an unreachable host)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        now = time.monotonic()
        if now < self.next_start:
            return
        quick_exit = self.proc is not None and now - self.started_at < 10
        self.backoff = min(self.backoff * 2, 10.0) if quick_exit else 0.5
        self.next_start, self.started_at = now + self.backoff, now
        forward_host = str(self.own.get("forward_host") or "localhost")
        log = open(self.workdir / "ssh.log", "ab")  # noqa: SIM115 - the child writes to it
        self.proc = subprocess.Popen(
            [shutil.which("ssh") or "ssh", "-N", "-F", str(self.config), "-o", "ExitOnForwardFailure=yes",
             "-L", f"127.0.0.1:{self.local_port}:{forward_host}:{self.app_port}", "replica"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        log.close()

    def last_error(self) -> str:
        try:
            lines = (self.workdir / "ssh.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)
