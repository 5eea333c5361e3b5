"""Instances for tests: network namespaces ("VM hosts") that run the user data a backend passed
at launch, so the real bootstrap and the real agent run.

Each VM host gets a veth pair with a private /30. Services the VM must reach (moto) are
forwarded from the host side of its veth to 127.0.0.1. The VM runs in its own mount namespace
with a tmpfs on /opt/dstack, so VMs don't share what they download. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import psutil

_COUNTER = itertools.count(1)


def can_run_vm_hosts() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "VM hosts need root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return False, "VM hosts need iproute2 and util-linux (ip, unshare)"
    return True, ""


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


class TcpForwarder:
    """Listens on (host, port) and pipes each connection to 127.0.0.1:target."""

    def __init__(self, host: str, target: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.target = target
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                conn.close()
                continue
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class VMHost:
    def __init__(self, workdir: Path) -> None:
        n = next(_COUNTER)
        tag = f"{os.getpid() % 10000}x{n}"
        self.ns = f"dstk{tag}"
        self.veth_host, self.veth_vm = f"dh{tag}", f"dv{tag}"
        subnet = (os.getpid() % 200) + 20
        self.host_ip, self.vm_ip = f"10.{subnet}.{n % 250}.1", f"10.{subnet}.{n % 250}.2"
        self.workdir = workdir
        self.forwarders: list[TcpForwarder] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> VMHost:
        _sh("ip", "netns", "add", self.ns)
        _sh("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_vm)
        _sh("ip", "link", "set", self.veth_vm, "netns", self.ns)
        _sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth_host)
        _sh("ip", "link", "set", self.veth_host, "up")
        _sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.vm_ip}/30", "dev", self.veth_vm)
        _sh("ip", "netns", "exec", self.ns, "ip", "link", "set", self.veth_vm, "up")
        _sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        return self

    def forward(self, target_port: int) -> int:
        """A port on the VM's side of the link that reaches 127.0.0.1:target_port here."""
        forwarder = TcpForwarder(self.host_ip, target_port)
        self.forwarders.append(forwarder)
        return forwarder.port

    def run_user_data(self, script: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "user-data.sh"
        path.write_text(script)
        Path("/opt/dstack").mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "cloud-init.log", "ab")  # noqa: SIM115 - the child writes to it
        # As cloud-init would: as root, with a private /opt/dstack (a tmpfs in its own mount namespace).
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "--mount", "--propagation", "private", "--",
             "bash", "-c", f"mount -t tmpfs tmpfs /opt/dstack && exec bash {path}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self.proc

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def power_off(self) -> None:
        """What the cloud does to a terminated instance: every process in it dies."""
        for pid in self.pids():
            try:
                for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                    proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass

    def destroy(self) -> None:
        self.power_off()
        for forwarder in self.forwarders:
            forwarder.close()
        subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
