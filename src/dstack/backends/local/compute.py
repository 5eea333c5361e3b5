"""Runs each job as an agent process on this machine, in its own session."""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import psutil

from dstack.agent.process import kill_tree
from dstack.backends.base import BackendContext, Compute, JobLaunch, LaunchedInstance, LaunchError, Requirements
from dstack.backends.local.models import LocalBackendConfig
from dstack.core.resources import GPU, InstanceResources
from dstack.core.runs import Offer
from dstack.storage.local import DirectoryStorage

REGION = "local"


class LocalCompute(Compute):
    TYPE = "local"

    def __init__(self, config: LocalBackendConfig, ctx: BackendContext) -> None:
        self.config = config
        # The project's bucket is a directory on this machine; jobs run in fresh directories beside it.
        self.storage = DirectoryStorage(ctx.server_dir / "projects" / ctx.project / "bucket")
        self.workdirs = ctx.server_dir / "workdirs"

    def unsupported(self, requirements: Requirements) -> str | None:
        if requirements.image:
            return "the local backend runs jobs directly on this machine and cannot run `image`"
        if requirements.spot_policy == "spot":
            return "the local backend has no spot instances (use spot_policy: auto or on-demand)"
        if requirements.python and shutil.which(f"python{requirements.python}") is None:
            return f"python{requirements.python} is not installed on this machine"
        if requirements.regions and REGION not in requirements.regions:
            return f"the local backend has only region `{REGION}`"
        return None

    def get_offers(self, requirements: Requirements) -> list[Offer]:
        resources = InstanceResources(
            cpus=os.cpu_count() or 1,
            memory_gb=psutil.virtual_memory().total / 2**30,
            gpus=list(_detect_gpus()),
            disk_gb=shutil.disk_usage(self.workdirs if self.workdirs.exists() else "/").free / 2**30,
        )
        return [Offer(backend=self.TYPE, region=REGION, instance_type=socket.gethostname(),
                      resources=resources, price=0.0)]

    def launch(self, *, job: JobLaunch, offer: Offer) -> LaunchedInstance:
        workdir = self.workdirs / job.job_id
        workdir.mkdir(parents=True, exist_ok=True)
        # Secrets reach the agent through its environment, never through the bucket.
        env = {**os.environ, "DSTACK_AGENT_SECRETS": json.dumps(job.secrets)}
        try:
            log = open(workdir / "agent.log", "ab")  # noqa: SIM115 - handed to the child
            proc = subprocess.Popen(
                [sys.executable, "-m", "dstack.agent", "--storage", self.storage.url,
                 "--job", job.job_prefix, "--workdir", str(workdir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                # A session of its own: the agent outlives a server that is killed or restarted.
                start_new_session=True, close_fds=True,
            )
            log.close()
        except OSError as exc:
            raise LaunchError(f"could not start the agent: {exc}") from exc
        # Reap it when it exits, so finished agents don't linger as zombies of the server.
        threading.Thread(target=proc.wait, daemon=True).start()
        return LaunchedInstance(
            instance_id=f"local-{proc.pid}",
            region=REGION,
            data={"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
                  "hostname": socket.gethostname(), "workdir": str(workdir), "job_prefix": job.job_prefix},
        )

    def terminate(self, *, instance: LaunchedInstance) -> None:
        data = instance.data
        if data.get("hostname") != socket.gethostname():
            return  # another replica's machine: that replica's reconciler cleans it up
        kill_tree(int(data["pid"]), data.get("create_time"))
        runner = self.storage.get_json(f"{data['job_prefix']}/runner.json") or {}
        if runner.get("job_pid"):
            kill_tree(int(runner["job_pid"]), runner.get("job_create_time"))
        shutil.rmtree(data["workdir"], ignore_errors=True)


@functools.cache
def _detect_gpus() -> tuple[GPU, ...]:
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        name, _, memory = line.rpartition(",")
        gpus.append(GPU(name=_short_gpu_name(name), memory_gb=round(float(memory) / 1024)))
    return tuple(gpus)


def _short_gpu_name(name: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'A100'; 'NVIDIA H100 80GB HBM3' -> 'H100'."""
    from dstack.core.gpus import KNOWN_GPUS

    words = name.replace("NVIDIA", "").replace("Tesla", "").replace("GeForce", "").replace("-", " ").split()
    for word in words:
        for known in KNOWN_GPUS:
            if word.upper() == known.upper():
                return known
    return words[0] if words else name.strip()


COMPUTE_CLASS = LocalCompute
