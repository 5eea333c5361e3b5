"""VM hosts with sshd, as the hosts of an SSH fleet: each with a Podman of its own (the sessions'
storage and run-time state are the VM's), an agent directory of its own, optionally no container
runtime on its sessions' PATH, and optionally a shared bridge (a private network between them)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import need, wait_for
from tests.registry import PODMAN_RUN_ARGS
from tests.vmhost import VMHost, can_run_vm_hosts

TOOLS = ("python3", "bash", "env", "sh", "id", "mkdir", "cat", "mv", "test", "rm", "sleep", "pkill", "setsid",
         "nohup")


def bridge_address(index: int) -> str:
    return f"10.251.{os.getpid() % 250}.{index + 10}"


@contextmanager
def ssh_hosts(tmp_path: Path, count: int, *, bare: list[int] = (), bridge: bool = False
              ) -> Iterator[tuple[list[VMHost], Path]]:
    """`count` VM hosts and the private key that logs in to them as `ubuntu` (uid 0); the hosts in
    `bare` have python3 and the basic tools but no container runtime."""
    ok, why = can_run_vm_hosts()
    need(ok, why)
    key = tmp_path / "fleet_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = (tmp_path / "fleet_key.pub").read_text().strip()
    bare_bin = tmp_path / "bare-bin"
    bare_bin.mkdir()
    for tool in TOOLS:
        found = next((f"{d}/{tool}" for d in ("/usr/bin", "/bin") if os.path.exists(f"{d}/{tool}")), None)
        if found:
            (bare_bin / tool).symlink_to(found)
    bridge_name = f"dstkbr{os.getpid() % 100000}" if bridge else None
    if bridge_name:
        subprocess.run(["ip", "link", "add", "name", bridge_name, "type", "bridge"], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", bridge_name, "up"], check=True, capture_output=True)
    vms: list[VMHost] = []
    try:
        for i in range(count):
            vm = VMHost(tmp_path / f"vm{i}").start()
            if bridge_name:
                vm.join_bridge(bridge_name, f"{bridge_address(i)}/24")
            # The sessions use a Podman of the VM's own (its storage and run-time state, as the VM's
            # Docker service has): containers never enter the machine's own Podman.
            env = {"DSTACK_CONTAINER_RUN_ARGS": PODMAN_RUN_ARGS,
                   "CONTAINERS_STORAGE_CONF": str(vm.workdir / "storage.conf"),
                   "CONTAINERS_CONF": str(vm.workdir / "containers.conf")}
            if i in bare:
                env["PATH"] = str(bare_bin)
            vm.boot("exec sleep infinity\n", {}, sshd=True, ssh_user="ubuntu", authorized_keys=[public],
                    sshd_env=env, private_dirs=["/var/lib/dstack-agent"])
            vms.append(vm)
        for vm in vms:
            wait_for(lambda vm=vm: (vm.workdir / "sshd.pid").exists(), 30, message="the VM's sshd")
        yield vms, key
    finally:
        for vm in vms:
            vm.destroy()
        if bridge_name:
            subprocess.run(["ip", "link", "del", bridge_name], capture_output=True)
