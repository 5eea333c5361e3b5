"""Runs each job as an agent process on this machine, in its own session."""

from __future__ import annotations

import functools
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from dstack.agent import container, sandbox
from dstack.agent.process import kill_tree
from dstack.backends.base import (
    BackendContext,
    Compute,
    JobLaunch,
    LaunchedInstance,
    LaunchError,
    LaunchIntent,
    Requirements,
)
from dstack.backends.local import capacity
from dstack.backends.local.forkserver import FORK_SERVER, ForkServerError
from dstack.backends.local.models import LocalBackendConfig
from dstack.core.resources import GPU, InstanceResources
from dstack.core.runs import Offer
from dstack.storage.local import DirectoryStorage

REGION = "local"


def traversable_dirs(path: Path) -> None:
    """`path` (0711) and its ancestors, each traversable by the job's unprivileged user. The server's
    umask (077) would make missing parents 0700; a dstack directory of ours left so gets its x bits
    back (other directories, such as a home, are the admin's to open)."""
    missing = []
    for parent in [path, *path.parents]:
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)
    os.chmod(path, 0o711)
    for parent in path.parents:
        info = parent.stat()
        if info.st_uid == os.geteuid() and "dstack" in parent.name and not info.st_mode & 0o001:
            os.chmod(parent, info.st_mode | 0o111)


class LocalCompute(Compute):
    TYPE = "local"

    def __init__(self, config: LocalBackendConfig, ctx: BackendContext) -> None:
        self.config = config
        self.ctx = ctx
        # The project's bucket is a directory on this machine; jobs run in fresh directories beside it.
        self.storage = DirectoryStorage(ctx.server_dir / "projects" / ctx.project / "bucket")
        self.workdirs = ctx.local_jobs_dir or ctx.server_dir / "workdirs"

    def unsupported(self, requirements: Requirements) -> str | None:
        if requirements.image and container.find_runtime() is None:
            return ("`image` needs Docker or Podman on the server's machine and neither is installed "
                    "(e.g. `apt-get install podman` or https://docs.docker.com/engine/install/)")
        if requirements.spot_policy == "spot":
            return "the local backend has no spot instances (use spot_policy: auto or on-demand)"
        if requirements.availability_zones:
            return "the local backend has no availability zones"
        if requirements.reservation:
            return "the local backend has no capacity reservations"
        if requirements.docker and container.find_runtime() is None:
            return "`docker: true` needs Docker or Podman on the server's machine and neither is installed"
        if requirements.container_fields:
            return (f"{', '.join(f'`{f}`' for f in requirements.container_fields)} need `image` on the local backend "
                    "(a job without one runs in the machine's sandbox, not a container)")
        if requirements.nvcc and not requirements.image and not shutil.which("nvcc"):
            return "`nvcc: true`: this machine has no nvcc on its PATH (install the CUDA toolkit, or use `image`)"
        if requirements.python:
            try:
                sandbox.find_python(requirements.python, self._job_ids())
            except RuntimeError as exc:
                return str(exc)
        if requirements.instance_volumes:  # directories of the server's own machine
            if not requirements.admin:
                return ("instance volumes (`/path:/path`) on the local backend mount directories of the server's "
                        "machine: only the server's admins may")
            for path in requirements.instance_volumes:
                clean = os.path.normpath(path)
                if clean == "/" or any(clean == p or clean.startswith(p.rstrip("/") + "/") or p.startswith(clean + "/")
                                       for p in self.ctx.private_paths):
                    return (f"volumes: {path} holds the server's own files (its directory, its user's HOME): "
                            "choose another directory")
        if requirements.regions and REGION not in requirements.regions:
            return f"the local backend has only region `{REGION}`"
        machine = "arm" if platform.machine().lower() in ("aarch64", "arm64") else "x86"
        if requirements.resources.cpu_arch and requirements.resources.cpu_arch != machine:
            return f"this machine's CPU is {machine}, not {requirements.resources.cpu_arch}"
        why_not = self.isolation_unavailable()
        if why_not and not requirements.admin and not requirements.image:
            return (f"the local backend cannot isolate jobs from the server on this machine ({why_not}), "
                    "so it runs jobs only for the server's admins")
        return None

    def _job_ids(self) -> tuple[int, int] | None:
        if self.isolation_unavailable():
            return None
        return sandbox.Sandbox(user=self.ctx.local_job_user).uid_gid()

    def isolation_unavailable(self) -> str | None:
        """None if host jobs run sandboxed here, else why not."""
        return sandbox.available(self.ctx.local_job_user)

    def get_offers(self, requirements: Requirements) -> list[Offer]:
        # What running jobs hold is not on offer (see capacity.py).
        hold = capacity.held(self.workdirs)
        resources = InstanceResources(
            cpus=max(0, (os.cpu_count() or 1) - hold.cpus),
            memory_gb=max(0.0, psutil.virtual_memory().total / 2**30 - hold.memory_gb),
            gpus=[g for i, g in enumerate(_detect_gpus()) if i not in hold.gpus],
            disk_gb=shutil.disk_usage(self.workdirs if self.workdirs.exists() else "/").free / 2**30,
        )
        return [Offer(backend=self.TYPE, region=REGION, instance_type=socket.gethostname(),
                      resources=resources, price=0.0)]

    def prepare_job(self, job: JobLaunch) -> dict[str, Any]:
        hold = capacity.reserve(self.workdirs, job.job_id, cpus=job.reserved_cpus,
                                memory_gb=job.reserved_memory_gb, gpu_count=job.gpu_count,
                                machine_gpus=len(_detect_gpus()), machine_cpus=os.cpu_count() or 1,
                                machine_memory_gb=psutil.virtual_memory().total / 2**30)
        if hold is None:
            raise LaunchError("what the job asks for is held by another job now")
        gpus = {"gpus": [str(i) for i in hold.gpus]} if job.gpu_count else {}  # free ones, not all of them
        # The job's own sshd (`dstack attach`, `ssh RUN`), for the run's user's key only.
        ssh = {"ssh": {"listen": self.ctx.local_ssh_host, "keys": job.ssh_public_keys}} if job.ssh_public_keys else {}
        if job.image:  # the container is the isolation
            return {"container_runtime": container.find_runtime(),
                    "container_run_args": shlex.split(os.environ.get("DSTACK_CONTAINER_RUN_ARGS", "")), **gpus, **ssh}
        extras: dict[str, Any] = {**gpus, **ssh}
        try:  # resolved once here (cached), not by every agent: probing interpreters costs a few 100 ms
            python = sandbox.find_python(job.python, self._job_ids())
            extras["python_install"] = {"executable": python.executable, "prefix": python.prefix,
                                        "version": python.version}
        except RuntimeError:
            pass  # the agent says why (or, with no version asked for, runs without a python shim)
        if self.isolation_unavailable():
            return extras  # admins' jobs only (see unsupported): they still get a clean environment
        hide = [*self.ctx.private_paths, str(self.workdirs)]
        return {**extras, "sandbox": {"type": "bwrap", "hide": hide, "user": self.ctx.local_job_user}}

    def launch(self, *, job: JobLaunch, offer: Offer) -> LaunchedInstance:
        workdir = self.workdirs / job.job_id
        try:
            # Traversable, not listable: the job's unprivileged user reaches only its own directory.
            traversable_dirs(self.workdirs)
            workdir.mkdir(exist_ok=True)
            os.chmod(workdir, 0o711)
            # Secrets reach the agent through a 0600 file it reads once and deletes: never through the
            # bucket, argv or one environment string (which has a size limit).
            fd = os.open(workdir / "secrets.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(job.secrets, f)
            base_env = {"PATH": os.environ.get("PATH", sandbox.SYSTEM_PATH), "HOME": str(Path.home()),
                        "LANG": os.environ.get("LANG", "C.UTF-8")}
            # The container runtime's own settings (registries, storage), for `image` jobs.
            base_env.update({k: v for k, v in os.environ.items() if k.startswith(("CONTAINERS_", "DOCKER_"))})
            # Where GPU samples come from, if not nvidia-smi (see dstack/agent/metrics.py).
            if os.environ.get("DSTACK_GPU_METRICS_FILE"):
                base_env["DSTACK_GPU_METRICS_FILE"] = os.environ["DSTACK_GPU_METRICS_FILE"]
            env = {**base_env, "DSTACK_AGENT_SECRETS_FILE": str(workdir / "secrets.json")}
            argv = ["--storage", self.storage.url, "--job", job.job_prefix, "--workdir", str(workdir)]
            pid, create_time = self._start_agent(argv, env=env, base_env=base_env, log=workdir / "agent.log")
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            capacity.release(self.workdirs, job.job_id)
            raise LaunchError(f"could not start the agent: {exc}") from exc
        capacity.record(self.workdirs, job.job_id, pid=pid, create_time=create_time)
        return self._instance(job.job_id, job.job_prefix, pid, create_time)

    def _start_agent(self, argv: list[str], *, env: dict[str, str], base_env: dict[str, str],
                     log: Path) -> tuple[int, float]:
        """(pid, start time) of the job's agent: forked by the fork server, or, if that fails, a new
        interpreter (the agent's own log says which)."""
        try:
            return FORK_SERVER.spawn(argv, env=env, base_env=base_env, log=log, server_dir=self.ctx.server_dir,
                                     server_log=self.ctx.server_dir / "forkserver.log")
        except ForkServerError as exc:
            why = f"dstack: {exc}; starting the agent as a new process\n".encode()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            out.write(why)
            out.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "dstack.agent", *argv], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=env,
                # A session of its own: the agent outlives a server that is killed or restarted.
                start_new_session=True, close_fds=True,
            )
        # Read before anything may reap it: an unreaped child stays readable even once it has exited.
        create_time = psutil.Process(proc.pid).create_time()
        # Reap it when it exits, so finished agents don't linger as zombies of the server.
        threading.Thread(target=proc.wait, daemon=True).start()
        return proc.pid, create_time

    def _instance(self, job_id: str, job_prefix: str, pid: int, create_time: float) -> LaunchedInstance:
        return LaunchedInstance(
            instance_id=f"local-{pid}",
            region=REGION,
            data={"pid": pid, "create_time": create_time, "hostname": socket.gethostname(),
                  "workdir": str(self.workdirs / job_id), "job_prefix": job_prefix},
        )

    def find_launched(self, *, intent: LaunchIntent) -> LaunchedInstance | None:
        """The agent of a launch the server did not get to record: its job directory and the pid it wrote."""
        if not (self.workdirs / intent.job_id).exists():
            return None
        runner = self.storage.get_json(f"{intent.job_prefix}/runner.json") or {}
        if not runner.get("agent_pid") or runner.get("hostname") != socket.gethostname():
            return None
        return self._instance(intent.job_id, intent.job_prefix, int(runner["agent_pid"]),
                              float(runner["agent_create_time"]))

    def terminate(self, *, instance: LaunchedInstance) -> None:
        data = instance.data
        if data.get("hostname") != socket.gethostname():
            return  # another replica's machine: that replica's reconciler cleans it up
        kill_tree(int(data["pid"]), data.get("create_time"))
        runner = self.storage.get_json(f"{data['job_prefix']}/runner.json") or {}
        if runner.get("job_pid"):
            kill_tree(int(runner["job_pid"]), runner.get("job_create_time"))
        if runner.get("container"):  # the container outlives the killed `run` client: remove it
            container.Runtime(runner["container"]["runtime"]).remove(runner["container"]["name"])
        workdir = Path(data["workdir"])
        _kill_job_sshd(workdir)  # its own session: it outlives a killed agent
        shutil.rmtree(workdir, ignore_errors=True)
        capacity.forget(workdir.parent, workdir.name)


def _kill_job_sshd(workdir: Path) -> None:
    """The job's sshd (see dstack/agent/ssh.py), by its pid file, if it still serves this job."""
    try:
        pid = int((workdir / "ssh" / "sshd.pid").read_text().split()[0])
        proc = psutil.Process(pid)
        if str(workdir) in " ".join(proc.cmdline()):
            proc.kill()
    except (OSError, ValueError, IndexError, psutil.Error):
        pass


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
