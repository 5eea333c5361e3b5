"""Instances for tests: network namespaces ("VM hosts") that run the user data a backend passed
at launch, so the real bootstrap and the real agent run.

Each VM host gets a veth pair with a private /30. Services the VM must reach (moto) are
forwarded from the host side of its veth to 127.0.0.1. The VM runs in its own mount namespace
with a tmpfs on /opt/dstack, so VMs don't share what they download. Needs root and iproute2.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from tests.netns_forward import relay

_COUNTER = itertools.count(1)


def can_run_vm_hosts() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "VM hosts need root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return False, "VM hosts need iproute2 and util-linux (ip, unshare)"
    if not (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")):
        return False, "VM hosts need sshd (apt-get install openssh-server)"
    from tests.stock_tree import can_use_stock_tree

    return can_use_stock_tree()


# Where a VM's /run is also mounted, in its own mount namespace (an empty directory here).
VM_RUN = "/run/dstack-test-vm-run"
STOCK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


HOST_CGROUPS = "/run/dstack-test-host-cgroups"


def host_cgroups() -> bool:
    """The host's /sys/fs/cgroup bound at HOST_CGROUPS (once per machine), for VMs to bind back."""
    if subprocess.run(["mountpoint", "-q", HOST_CGROUPS]).returncode == 0:
        return True
    Path(HOST_CGROUPS).mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "--rbind", "/sys/fs/cgroup", HOST_CGROUPS], capture_output=True).returncode == 0


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
            relay(conn, upstream)

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

    def join_bridge(self, bridge: str, address: str) -> None:
        """A second link, on the host's bridge `bridge`, with `address` (CIDR): the VMs on one bridge
        reach each other directly, as instances on one private network."""
        tag = self.ns.removeprefix("dstk")
        self.veth_bridge, vm_side = f"db{tag}", f"dw{tag}"
        _sh("ip", "link", "add", self.veth_bridge, "type", "veth", "peer", "name", vm_side)
        _sh("ip", "link", "set", self.veth_bridge, "master", bridge)
        _sh("ip", "link", "set", self.veth_bridge, "up")
        _sh("ip", "link", "set", vm_side, "netns", self.ns)
        _sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", address, "dev", vm_side)
        _sh("ip", "netns", "exec", self.ns, "ip", "link", "set", vm_side, "up")

    def forward(self, target_port: int) -> int:
        """A port on the VM's side of the link that reaches 127.0.0.1:target_port here."""
        forwarder = TcpForwarder(self.host_ip, target_port)
        self.forwarders.append(forwarder)
        return forwarder.port

    def boot(self, script: str, env: dict[str, str], *, sshd: bool = False, ssh_user: str = "ubuntu",
             loopback_forwards: list[tuple[int, int]] = (), authorized_keys: list[str] = (),
             sshd_env: dict[str, str] | None = None, private_dirs: list[str] = (),
             binds: list[tuple[str, str]] = (), init: list[str] = ()) -> subprocess.Popen[bytes]:
        """Boot like a cloud VM from a stock image: the user data runs as root, chrooted into a private
        overlay of the stock OS tree (tests/stock_tree.py), with /opt/dstack a tmpfs of the VM's own,
        Docker's client and socket as the ECS AMI has them (served by a podman service in the VM's
        namespaces, with a storage of its own that also reads the host's images), optional sshd (the
        image's default user `ssh_user`, keys from its ~/.ssh, `sshd_env` set in its sessions), and forwarders from the VM's 127.0.0.1:PORT to services here."""
        from tests.stock_tree import docker_client, stock_tree

        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        root = w / "root"
        for sub in ("root", "upper", "overlay-work", "storage", "runroot"):
            (w / sub).mkdir(exist_ok=True)
        (w / "user-data.sh").write_text(script)
        (w / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n')
        host_store = Path("/var/lib/containers/storage")
        (w / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{w}/storage"\nrunroot = "{w}/runroot"\n'
            + (f'[storage.options]\nadditionalimagestores = ["{host_store}"]\n' if host_store.is_dir() else ""))
        lines = [
            "set -e", f"export PATH={STOCK_PATH}",
            f"mount -t overlay overlay -o lowerdir={stock_tree()},upperdir={w}/upper,workdir={w}/overlay-work {root}",
            # Shared with the chroot's bind of it: what the agent mounts there (a volume) the VM's
            # container runtime, outside the chroot, sees too, as on one machine.
            "mount -t tmpfs tmpfs /opt/dstack && mount --make-shared /opt/dstack",
            f"mkdir -p {root}/opt/dstack && mount --bind /opt/dstack {root}/opt/dstack",
            f"mount --rbind /dev {root}/dev && mount -t proc proc {root}/proc && mount --rbind /sys {root}/sys",
            # The image's /run, also at a short path here (a socket's path must fit in 108 bytes).
            f"mount -t tmpfs -o mode=755 tmpfs {root}/run && mount --bind {root}/run {VM_RUN}",
            f"touch {root}/usr/bin/docker && mount --bind {docker_client()} {root}/usr/bin/docker",
            f"cp {w}/user-data.sh {root}/var/lib/user-data.sh",
            # Directories of the machine that are the VM's own (where an SSH fleet installs its agent).
            *[f"mkdir -p {d} && mount -t tmpfs -o mode=755 tmpfs {d}" for d in private_dirs],
            # Directories of this machine at `target` in the VM, inside and outside its chroot (a network
            # file system the provider mounts, e.g. Lambda's /lambda/nfs/NAME).
            *[f"mkdir -p {t} {root}{t} && mount --bind {src} {t} && mount --bind {src} {root}{t}"
              for src, t in binds],
        ]
        if host_cgroups():  # `ip netns exec` remounts /sys: give the VM the host's cgroups (for containers)
            lines.append(f"mount --rbind {HOST_CGROUPS} /sys/fs/cgroup && mount --rbind {HOST_CGROUPS} {root}/sys/fs/cgroup")
        # The image's Docker daemon: outside the chroot, in the VM's namespaces, so the paths a job's
        # container mounts (under /opt/dstack) are the VM's own. Its run-time state is the VM's own too
        # (podman's exit files and events in /run/libpod: shared with the host's, `wait` never returns).
        lines += [
            "for d in /run/libpod /run/containers /run/netns; do mkdir -p $d && mount -t tmpfs tmpfs $d; done",
            f"CONTAINERS_CONF={w}/containers.conf CONTAINERS_STORAGE_CONF={w}/storage.conf setsid podman "
            f"system service --time 0 unix://{VM_RUN}/docker.sock > {w}/dockerd.log 2>&1 < /dev/null &",
            f"for i in $(seq 300); do [ -S {VM_RUN}/docker.sock ] && break; sleep 0.05; done",
        ]
        if sshd:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(w / "host_key")], check=True)
            (w / "sshd_config").write_text(
                f"Port 22\nListenAddress {self.vm_ip}\nHostKey {w}/host_key\nPidFile {w}/sshd.pid\n"
                "AuthorizedKeysFile .ssh/authorized_keys\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n"
                "StrictModes no\n"
                # One SetEnv line: sshd takes the first of each keyword, so a second line is ignored.
                + ("SetEnv " + " ".join(f'{k}="{v}"' for k, v in sshd_env.items()) + "\n" if sshd_env else ""))
            user = f"{ssh_user}:x:0:0:{ssh_user}:/opt/dstack/home/{ssh_user}:/bin/bash"
            lines += [
                # The default user exists in the image (where the user data authorizes keys) and for the
                # sshd, which runs outside the chroot and shares /opt/dstack with it.
                f"echo '{user}' >> {root}/etc/passwd",
                f"cp /etc/passwd {w}/passwd && echo '{user}' >> {w}/passwd",
                f"cp /etc/shadow {w}/shadow && echo '{ssh_user}:*:19000:0:99999:7:::' >> {w}/shadow",
                f"mount --bind {w}/passwd /etc/passwd && mount --bind {w}/shadow /etc/shadow",
                # The VM's own /etc/ssh, holding its host key, as a cloud image has after first boot.
                f"mkdir -p {w}/etc-ssh && cp {w}/host_key.pub {w}/etc-ssh/ssh_host_ed25519_key.pub",
                f"mount --bind {w}/etc-ssh /etc/ssh",
                f"mkdir -p {root}/etc/ssh && cp {w}/host_key.pub {root}/etc/ssh/ssh_host_ed25519_key.pub",
                f"mkdir -p /opt/dstack/home/{ssh_user}/.ssh /run/sshd",
                *[f"echo '{key}' >> /opt/dstack/home/{ssh_user}/.ssh/authorized_keys" for key in authorized_keys],
                f"/usr/sbin/sshd -f {w}/sshd_config -E {w}/sshd.log",
            ]
        forwarder = Path(__file__).with_name("netns_forward.py")
        for vm_port, host_port in loopback_forwards:
            lines.append(f"setsid {sys.executable} {forwarder} 127.0.0.1 {vm_port} {self.host_ip} "
                         f"{self.forward(host_port)} >>{w}/forward.log 2>&1 < /dev/null &")
            lines.append(f"{sys.executable} -c 'import socket,time\nfor _ in range(100):\n    try:\n        "
                         f"socket.create_connection((\"127.0.0.1\", {vm_port}), 0.2).close(); break\n    "
                         f"except OSError: time.sleep(0.05)'")
        lines += list(init)  # what a test adds to the machine (in its namespaces, outside the image)
        lines.append(f"exec chroot {root} /bin/bash /var/lib/user-data.sh")
        (w / "init.sh").write_text("\n".join(lines) + "\n")
        Path("/opt/dstack").mkdir(parents=True, exist_ok=True)
        Path(VM_RUN).mkdir(parents=True, exist_ok=True)
        log = open(w / "cloud-init.log", "ab")  # noqa: SIM115 - the child writes to it
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "--mount", "--propagation", "private", "--",
             "bash", str(w / "init.sh")], env={"PATH": STOCK_PATH, **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        return self.proc

    def snapshot(self) -> Path:
        """Copy what the VM has in /opt/dstack, and its processes' environments, for inspection."""
        target = self.workdir / "snapshot"
        target.mkdir(exist_ok=True)
        envs = []
        for pid in self.pids():
            try:
                envs.append(Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace"))
                root = Path(f"/proc/{pid}/root/opt/dstack")
                if root.is_dir():
                    shutil.copytree(root, target / "opt-dstack", dirs_exist_ok=True, symlinks=True)
            except OSError:
                pass
        (target / "environ.txt").write_text("\n".join(envs))
        return target

    def path(self, path: str) -> Path:
        """A path as the VM's sshd and its sessions see it (the VM's own mounts, outside the chroot)."""
        pid = int((self.workdir / "sshd.pid").read_text())
        return Path(f"/proc/{pid}/root") / path.lstrip("/")

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
        if self.proc is not None:  # the user data's shell: reap it once it is dead
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
        for forwarder in self.forwarders:
            forwarder.close()
        subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True)
        if getattr(self, "veth_bridge", None):
            subprocess.run(["ip", "link", "del", self.veth_bridge], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
