"""`dstack attach` (and `dstack apply` of a dev environment or a task with `ports`): SSH into the
run with the user's own `ssh`, as upstream does.

- `~/.dstack/ssh/config` (dstack's own) gets a `Host RUN` entry: the job's address, the user's key,
  and a known_hosts file holding exactly the host key the job's agent published (a changed key is
  refused). `~/.ssh/config` includes it once the user agrees (asked on first use, at a terminal), so
  `ssh RUN` and an IDE's remote SSH work; the entry goes when the run has ended.
- Each `ports` entry is forwarded (`8080`, `8000:80`, `*:8080` picks a free local port) by an
  `ssh -N` that reconnects while the run is alive.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dstack.agent.process import stop_process
from dstack.core.hostkeys import write_known_hosts_entries
from dstack.core.sshkeys import user_key

IDE_SCHEMES = {"vscode": "vscode", "cursor": "cursor", "windsurf": "windsurf"}
_BLOCK = re.compile(r"^# >>> dstack (?P<name>\S+)\n.*?^# <<< dstack (?P=name)\n", re.M | re.S)


def ssh_dir() -> Path:
    return user_key()[0].parent


def config_path() -> Path:
    return ssh_dir() / "config"


def write_host_entry(run: str, info: dict[str, Any]) -> Path:
    """The run's `Host` block in dstack's SSH config, replacing an older one. On a cloud instance
    the job's sshd is on the instance's loopback: `Host RUN` jumps there through `Host RUN-host`,
    the instance's own sshd (where the user's key may open that one forward and nothing else)."""
    key, _ = user_key()
    jump = info.get("proxy_jump")
    entries = [(run, info["host"], int(info["port"]), list(info.get("host_keys") or []))]
    if jump:
        entries.append((f"{run}-host", jump["host"], int(jump.get("port") or 22), list(jump.get("host_keys") or [])))
    # One known_hosts file per run, each key under the alias it is for (HostKeyAlias): the job's
    # sshd of every cloud run is 127.0.0.1:10022, each with its own key.
    known = write_known_hosts_entries(ssh_dir() / f"known_hosts-{run}",
                                      [(alias, keys) for alias, _, _, keys in entries])
    common = [f"  IdentityFile {key}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {known}",
              "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes", "  CheckHostIP no",
              "  ServerAliveInterval 10", "  ServerAliveCountMax 3"]
    lines = [f"# >>> dstack {run}", f"Host {run}", f"  HostName {info['host']}", f"  Port {info['port']}",
             f"  User {info['user']}", f"  HostKeyAlias {run}", *common]
    control = control_path(run)
    if control is not None:
        # While `dstack attach` holds its connection (the master), `ssh RUN` and an IDE's sessions
        # share it: no new handshake, no second hop.
        lines.append(f"  ControlPath {control}")
    if jump:
        # The hop to the job's sshd runs inside the instance's SSH connection, whose key exchange is
        # the client's own (post-quantum by default): the inner one can be the fast classical one
        # without exposing anything to the network.
        lines += ["  KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org"]
        lines += [f"  ProxyJump {run}-host", f"Host {run}-host", f"  HostName {jump['host']}",
                  f"  Port {jump.get('port') or 22}", f"  User {jump['user']}", f"  HostKeyAlias {run}-host", *common]
        if jump.get("via"):  # a bastion in front of an instance without a public IP
            lines.append(f"  ProxyJump {jump['via']}")
    lines += [f"# <<< dstack {run}", ""]
    path = config_path()
    text = path.read_text() if path.exists() else ""
    text = _BLOCK.sub(lambda m: "" if m.group("name") == run else m.group(0), text)
    path.write_text(text + "\n".join(lines))
    os.chmod(path, 0o600)
    return path


def control_path(run: str) -> Path | None:
    """The socket of the run's shared connection: in a private directory with a short path (ssh
    adds 17 characters to it while binding, and a socket's path must fit in 108 bytes), named after
    the run and dstack's SSH directory (two configs, two sockets). None where no such directory is
    to be had (then ssh connects every time)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "dstack-ssh" if runtime and os.path.isdir(runtime) else \
        Path(tempfile.gettempdir()) / f"dstack-ssh-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        info = base.stat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or info.st_mode & 0o077:  # someone else's, or open to others
        return None
    digest = hashlib.sha256(f"{ssh_dir()}\0{run}".encode()).hexdigest()[:10]
    path = base / f"{run[:24]}-{digest}"
    return path if len(str(path)) <= 80 else None


def clear_stale_socket(path: Path) -> None:
    """A master that was killed leaves its socket: ssh would then never share a connection again."""
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)


def remove_host_entry(run: str) -> None:
    path = config_path()
    if path.exists():
        path.write_text(_BLOCK.sub(lambda m: "" if m.group("name") == run else m.group(0), path.read_text()))
    (ssh_dir() / f"known_hosts-{run}").unlink(missing_ok=True)


def include_line() -> str:
    return f"Include {config_path()}"


def ensure_included(ask: bool) -> bool:
    """`~/.ssh/config` includes dstack's, with the user's consent (asked once, at a terminal)."""
    user_config = Path.home() / ".ssh" / "config"
    text = user_config.read_text() if user_config.exists() else ""
    if include_line() in text:
        return True
    declined = ssh_dir() / ".include-declined"
    if not ask or declined.exists() or not sys.stdin.isatty():
        return False
    import typer

    if not typer.confirm(f"Add `{include_line()}` to {user_config}, so that `ssh RUN` and your IDE reach runs?",
                         default=True):
        declined.touch()
        return False
    user_config.parent.mkdir(mode=0o700, exist_ok=True)
    # At the top: an Include inside a Host block would apply to that host only.
    user_config.write_text(f"{include_line()}\n\n{text}")
    os.chmod(user_config, 0o600)
    return True


def ide_link(ide: str | None, run: str, working_dir: str) -> str | None:
    scheme = IDE_SCHEMES.get(ide or "")
    return f"{scheme}://vscode-remote/ssh-remote+{run}{working_dir}" if scheme else None


def free_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_forwards(ports: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(local port, container port) per `ports` entry; `*:PORT` gets a free local port."""
    forwards = []
    for port in ports:
        local = free_local_port() if port.get("any_local_port") else port.get("local_port") or port["container_port"]
        forwards.append((int(local), int(port["container_port"])))
    return forwards


def wait_attach_info(client: Any, run: str, timeout: float = 60.0) -> dict[str, Any]:
    """The run's SSH address, once its job listens (a run still starting is waited for)."""
    from dstack.core.errors import InvalidStateError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.runs.attach_info(run)
        except InvalidStateError:
            if time.monotonic() > deadline or client.runs.get(run).status.finished:
                raise
            time.sleep(0.5)


class Session:
    """An attachment: the SSH config entry, the forwards, and what to tell the user."""

    def __init__(self, client: Any, run: str, info: dict[str, Any], *, ask: bool) -> None:
        self.client, self.run, self.info = client, run, info
        write_host_entry(run, info)
        self.included = ensure_included(ask=ask)
        self.forwards = port_forwards(list(info.get("ports") or []))
        self.forwarder = Forwarder(run, self.forwards, alive=self.alive,
                                   target=str(info.get("forward_host") or "localhost"))

    def alive(self) -> bool:
        try:
            return not self.client.runs.get(self.run).status.finished
        except Exception:  # noqa: BLE001 - the server unreachable for a moment: keep trying
            return True

    def describe(self) -> list[str]:
        ssh = f"ssh {self.run}" if self.included else f"ssh -F {config_path()} {self.run}"
        lines = [f"SSH: {ssh}"]
        if not self.included:
            lines.append(f"(add `{include_line()}` to ~/.ssh/config for `ssh {self.run}` and your IDE)")
        link = ide_link(self.info.get("ide"), self.run, str(self.info.get("working_dir") or "/workflow"))
        if link:
            lines.append(f"To open in {self.info['ide']}, use this link: {link}")
        for local, remote in self.forwards:
            lines.append(f"Port {remote} is forwarded to localhost:{local}")
        return lines

    def start(self) -> Session:
        self.forwarder.start()
        return self

    def close(self) -> None:
        self.forwarder.stop()
        if not self.alive():
            remove_host_entry(self.run)


def ssh_command(run: str, *options: str, command: str | None = None) -> list[str]:
    return ["ssh", "-F", str(config_path()), *options, run, *([command] if command else [])]


class Forwarder:
    """`ssh -N -L …` to the run, reconnected while `alive()` says the run goes on."""

    def __init__(self, run: str, forwards: list[tuple[int, int]], alive: Any, target: str = "localhost") -> None:
        # `target`: where the job's ports are, seen from its sshd (its container's address, or localhost).
        self.run, self.forwards, self.alive, self.target = run, forwards, alive, target
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self.connects = 0
        self.last_error = ""
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Forwarder:
        self.thread.start()
        return self

    def _loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            args = [a for local, remote in self.forwards for a in ("-L", f"127.0.0.1:{local}:{self.target}:{remote}")]
            # The master of the run's shared connection (if another attach holds it, ssh says so and
            # goes on with a connection of its own).
            control = control_path(self.run)
            master = ["-o", "ControlMaster=yes", "-o", "ControlPersist=no"] if control else []
            if control is not None:
                clear_stale_socket(control)
            self.proc = subprocess.Popen(ssh_command(self.run, "-N", *master, "-o", "ExitOnForwardFailure=yes",
                                                     "-o", "BatchMode=yes", *args),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.connects += 1
            started = time.monotonic()
            _, err = self.proc.communicate()
            if self._stop.is_set() or not self.alive():
                return
            # ssh's own reason, once per new reason (a wrong host key, a refused key, a port taken).
            reason = next((line for line in reversed(err.decode(errors="replace").splitlines())
                           if line.strip() and "ControlSocket" not in line), "")
            if reason and reason != self.last_error:
                self.last_error = reason
                print(f"dstack: the connection to {self.run} ended: {reason.strip()} (reconnecting)",
                      file=sys.stderr, flush=True)
            # Dropped (network, a restarted sshd): reconnect, backing off while it keeps failing.
            delay = 0.5 if time.monotonic() - started > 10 else min(delay * 2, 10.0)
            self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        stop_process(self.proc)
