"""A stock cloud image's root file system for the VM hosts: Debian bullseye minbase (its `python3`
is 3.9, with no pip, boto3 or psutil; OpenSSH's server and iptables, as cloud images with Docker have) built once per machine with debootstrap from the mirror apt is
configured with, and cached. The VM hosts run the user data chrooted into a private overlay of it,
so what a stock image lacks, the tests lack too.

The container runtime is the one part a minbase tree cannot run nested here (Debian's podman needs
the host's cgroups and runc): each VM gets the host's runtime the way the ECS-optimized AMI has
Docker, a `docker` client in /usr/bin and a daemon socket at /var/run/docker.sock, served by a
`podman system service` that runs in the VM's own network and mount namespaces (see tests/vmhost.py).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("DSTACK_TEST_STOCK_TREE_CACHE", "/var/cache/dstack-test"))
TREE = CACHE / "bullseye-minbase-python3-sshd-iptables"
SUITE = "bullseye"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def apt_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1).rstrip("/")
            if uri.startswith("http") and uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def docker_client() -> str | None:
    """A statically linked `docker` client (it must run inside the tree, whose libraries differ)."""
    for candidate in (shutil.which("docker"), "/usr/local/bin/docker", "/usr/bin/docker"):
        if candidate and os.path.isfile(candidate):
            with open(candidate, "rb") as f:
                head = f.read(1 << 16)
            if head[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in head and b"ld-linux" not in head:
                return candidate
    return None


def can_use_stock_tree() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "the stock OS tree needs root (debootstrap, chroot, overlay mounts)"
    if not TREE.joinpath("usr/bin/python3").exists() and shutil.which("debootstrap") is None:
        return False, "debootstrap is not installed (apt-get install debootstrap)"
    if shutil.which("podman") is None:
        return False, "podman is not installed (apt-get install podman runc): the VM hosts' container runtime"
    if docker_client() is None:
        return False, "no statically linked docker client (the VM hosts' /usr/bin/docker, as on the ECS AMI)"
    return True, ""


def stock_tree() -> Path:
    """The cached tree, built on first use (about a minute; concurrent callers wait for one build)."""
    if (TREE / ".complete").exists():
        return TREE
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (TREE / ".complete").exists():
            return TREE
        building = CACHE / f"{TREE.name}.building"
        shutil.rmtree(building, ignore_errors=True)
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,openssh-server,iptables", SUITE, str(building),
             apt_mirror()],
            capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap {SUITE} failed: {(result.stdout + result.stderr)[-2000:]}")
        probe = subprocess.run(["chroot", str(building), "python3", "-c",
                                "import sys, importlib.util as u; print(sys.version_info[:2] == (3, 9), "
                                "[m for m in ('pip', 'boto3', 'psutil') if u.find_spec(m)])"],
                               capture_output=True, text=True)
        if probe.stdout.strip() != "True []":
            raise RuntimeError(f"the {SUITE} tree is not what a stock image is: {probe.stdout}{probe.stderr}")
        # Host keys are made at first boot (each VM host writes its own), not baked into the image.
        for key in (building / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        shutil.rmtree(building / "var/cache/apt/archives", ignore_errors=True)
        (building / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(TREE, ignore_errors=True)
        building.rename(TREE)
        (TREE / ".complete").touch()
    return TREE


STOCK_PYTHON_IMAGE = "localhost/dstack-test/python:3.9"


def default_image_env() -> dict[str, str]:
    """Server settings that make the cloud jobs without `image` run in the stock tree as an image
    (Python 3.9), imported once into the host's store, which every VM host reads: cached, as the
    default image is after an instance's first job."""
    if subprocess.run(["podman", "image", "exists", STOCK_PYTHON_IMAGE]).returncode != 0:
        tar = subprocess.Popen(["tar", "-C", str(stock_tree()), "--exclude=./.complete", "-c", "."],
                               stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "--change", 'CMD ["python3"]', "-", STOCK_PYTHON_IMAGE],
                       stdin=tar.stdout, capture_output=True, check=True)
        tar.wait()
    return {"DSTACK_DEFAULT_IMAGE": STOCK_PYTHON_IMAGE.replace(":3.9", ":{python}"), "DSTACK_DEFAULT_PYTHON": "3.9"}
