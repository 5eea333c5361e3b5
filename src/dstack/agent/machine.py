"""What a machine has, as the agent sees it: CPUs, memory, disk, NVIDIA GPUs and a container runtime.

Used by the agent of a fleet instance (published for the server) and by `python3 agent.pyz --probe`,
which the server runs over SSH to turn the hosts of an SSH fleet into offers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from dstack.agent.container import find_runtime


def _memory_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _gpus() -> tuple[list[dict[str, Any]], str | None]:
    """(GPUs, why there are none although the machine has some): nvidia-smi's view of them."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], None
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed: {exc}"
    if out.returncode != 0:
        return [], f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:200]}"
    gpus = []
    for line in out.stdout.strip().splitlines():
        name, _, memory = line.rpartition(",")
        gpus.append({"name": name.strip().replace("NVIDIA ", ""), "memory_mib": int(float(memory.strip() or 0))})
    return gpus, None


def _nvidia_toolkit() -> bool:
    """The container runtime can hand GPUs to containers (the NVIDIA Container Toolkit)."""
    return bool(shutil.which("nvidia-ctk") or shutil.which("nvidia-container-cli")
                or shutil.which("nvidia-container-runtime"))


def probe(runtime_preferred: str | None = None) -> dict[str, Any]:
    gpus, gpu_problem = _gpus()
    disk = shutil.disk_usage("/")
    runtime = find_runtime(runtime_preferred)
    problems = []
    if runtime is None:
        problems.append("no container runtime: install Docker (https://docs.docker.com/engine/install/) "
                        "or Podman, and make sure `docker info` works for the SSH user")
    if gpu_problem:
        problems.append(gpu_problem)
    if gpus and runtime is not None and not _nvidia_toolkit():
        problems.append("NVIDIA GPUs but no NVIDIA Container Toolkit: install it (https://docs.nvidia.com/"
                        "datacenter/cloud-native/container-toolkit/latest/install-guide.html) so that "
                        "containers get the GPUs")
    return {
        "cpus": os.cpu_count() or 1,
        "memory_mib": _memory_mib(),
        "disk_gb": round(disk.total / 2**30, 1),
        "gpus": gpus,
        "runtime": runtime,
        "arch": os.uname().machine,
        "hostname": os.uname().nodename,
        "problems": problems,
    }
