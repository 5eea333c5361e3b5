"""A container registry on loopback (Debian's `docker-registry`), filled with images the tests build
from busybox-static: nothing is pulled from the internet."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.harness import free_port

# Debian's podman as root needs these here (crun refuses the hybrid cgroup layout; no CAP_SYS_RESOURCE).
PODMAN_RUN_ARGS = "--runtime runc --cgroup-manager=cgroupfs --ulimit nofile=1024:1024 --ulimit nproc=1024:1024"


def can_run_containers() -> tuple[bool, str]:
    if shutil.which("podman") is None:
        return False, "podman is not installed (apt-get install podman runc)"
    if shutil.which("docker-registry") is None:
        return False, "the registry is not installed (apt-get install docker-registry)"
    if not Path("/bin/busybox").exists():
        return False, "busybox-static is not installed (apt-get install busybox-static)"
    if shutil.which("htpasswd") is None:
        return False, "htpasswd is not installed (apt-get install apache2-utils)"
    return True, ""


class Registry:
    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None) -> None:
        """With `users`, every repository is private (htpasswd: pushes and pulls need a login)."""
        self.workdir = workdir
        self.users = users or {}
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "registry.yml"
        text = (f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {self.workdir / 'data'}\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n")
        if self.users:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text("".join(subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True,
                                                       text=True, check=True).stdout.strip() + "\n"
                                        for user, password in self.users.items()))
            text += f"auth:\n  htpasswd:\n    realm: dstack-test\n    path: {htpasswd}\n"
        config.write_text(text)
        log = open(self.workdir / "registry.log", "ab")  # noqa: SIM115 - the child writes to it
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        (self.workdir / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{self.host}"\ninsecure = true\n')
        return self

    @property
    def env(self) -> dict[str, str]:
        """What the server (and through it the agent's runtime) needs to pull from here."""
        return {"CONTAINERS_REGISTRIES_CONF": str(self.workdir / "registries.conf"),
                "DSTACK_CONTAINER_RUN_ARGS": PODMAN_RUN_ARGS}

    def push_busybox(self, name: str) -> str:
        """A busybox image as `HOST/name`, pushed here and removed locally so that a job must pull it."""
        root = self.workdir / f"root-{name.replace('/', '_').replace(':', '_')}"
        (root / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        for applet in ("sh", "echo", "cat", "ls", "mkdir", "sleep", "env", "id", "pwd", "test", "printf"):
            target = root / "bin" / applet
            if not target.exists():
                target.symlink_to("busybox")
        (root / "tmp").mkdir(exist_ok=True)
        ref = f"{self.host}/{name}"
        tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True).stdout
        subprocess.run(["podman", "import", "--change", "CMD [\"/bin/echo\", \"hello from the image's own cmd\"]",
                        "-", ref], input=tar, capture_output=True, check=True)
        creds = [f"--creds={u}:{p}" for u, p in list(self.users.items())[:1]]
        subprocess.run(["podman", "push", "--tls-verify=false", *creds, ref], capture_output=True, check=True)
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True)
        return ref

    def serve_vms(self, vms: object) -> None:
        """Make this registry reachable from the VM hosts of a cloud stand-in (its VMs' own 127.0.0.1)."""
        # Their runtime (Docker's API, served by podman) has its settings in the VM's containers.conf.
        vms.vm_env["CONTAINERS_REGISTRIES_CONF"] = self.env["CONTAINERS_REGISTRIES_CONF"]  # type: ignore[attr-defined]
        vms.vm_loopback_ports.append(self.port)  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def registry_with_busybox(workdir: Path, name: str) -> Iterator[tuple[Registry, str]]:
    """A started registry holding a busybox image `name` (skips/fails with the reason if it cannot run)."""
    from tests.harness import need

    ok, why = can_run_containers()
    need(ok, why)
    registry = Registry(workdir).start()
    try:
        yield registry, registry.push_busybox(name)
    finally:
        registry.stop()
