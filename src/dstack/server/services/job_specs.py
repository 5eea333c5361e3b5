"""The job spec the agent reads from the bucket (`spec.json`): what to run, where, with what."""

from __future__ import annotations

import posixpath
from typing import Any

from dstack.backends.base import Compute, JobLaunch, job_image
from dstack.backends.bootstrap import DIND_START
from dstack.core.configurations import (
    WORKFLOW_DIR,
    BaseRunConfiguration,
    DevEnvironmentConfiguration,
    TaskConfiguration,
    interpolate_secrets,
)
from dstack.core.runs import RunSpec
from dstack.server.settings import Settings
from dstack.storage.layout import code_key

# `stop_duration: off`: the job may take as long as it likes to stop (the agent never kills it).
UNLIMITED_GRACE = 10**9


def stop_grace(conf: BaseRunConfiguration) -> float:
    """Seconds between SIGTERM and SIGKILL on a stop (upstream's `stop_duration`, default 5m)."""
    return float(conf.stop_duration) if conf.stop_duration is not None else float(UNLIMITED_GRACE)


def container_target(path: str, working_dir: str) -> str:
    """A path in the container: absolute, `~/…` (the job's home, expanded by the agent), or relative
    to the working directory."""
    if path.startswith(("/", "~")):
        return posixpath.normpath(path) if path.startswith("/") else path
    return posixpath.normpath(posixpath.join(working_dir, path))


def job_commands(conf: BaseRunConfiguration, run_name: str) -> list[str]:
    if isinstance(conf, TaskConfiguration):
        return [*conf.setup, *conf.commands]
    if conf.type == "service":  # its app, in the foreground (an image's own command when it has none)
        return [*conf.setup, *getattr(conf, "commands", [])]
    assert isinstance(conf, DevEnvironmentConfiguration)
    # A dev environment: run `init`, then stay up until stopped.
    return [*conf.setup, *conf.init,
            "echo 'The dev environment is ready. Stop it with `dstack stop " + run_name + "`.'",
            "exec sleep infinity"]


def job_shell(conf: BaseRunConfiguration) -> str:
    """As upstream: bash for the default image and host jobs, sh for a custom image."""
    shell = conf.shell or ("sh" if conf.image else "bash")
    return {"bash": "/bin/bash", "sh": "/bin/sh"}.get(shell, shell)


def build_job_spec(*, settings: Settings, run_spec: RunSpec, run_name: str, run_id: str, job_id: str,
                   secrets: dict[str, str]) -> dict[str, Any]:
    conf = run_spec.configuration
    working_dir = conf.job_working_dir()
    user_env = {k: interpolate_secrets(v, secrets, f"env.{k}") for k, v in conf.env.items() if v is not None}
    env = dict(user_env)
    env.update({"DSTACK_RUN_NAME": run_name, "DSTACK_RUN_ID": run_id, "DSTACK_JOB_ID": job_id,
                "DSTACK_REPO_ID": run_spec.repo_id, "DSTACK_WORKING_DIR": working_dir,
                "DSTACK_GPUS_NUM": str(_gpus(conf)), "DSTACK_GPUS_PER_NODE": str(_gpus(conf)),
                "DSTACK_NODES_NUM": "1", "DSTACK_NODE_RANK": "0"})
    repo = conf.repos[0] if conf.repos else None
    code_target = container_target(repo.path, working_dir) if repo else WORKFLOW_DIR
    if repo is not None:
        env["DSTACK_REPO_DIR"] = code_target
    commands = job_commands(conf, run_name)
    if conf.docker:  # the job's own Docker daemon first (see backends/bootstrap.py)
        commands = [DIND_START, *commands]
    return {
        "version": 1,
        "run_name": run_name,
        "commands": commands,
        "shell": "/bin/sh" if conf.docker and not conf.shell else job_shell(conf),
        "env": env,
        "working_dir": working_dir,
        "working_dir_set": conf.working_dir is not None,
        "artifacts": conf.artifacts if isinstance(conf, TaskConfiguration) else [],
        "python": conf.python,
        "image": job_image(conf),
        # A cloud instance is the job's alone: all its GPUs. (The local backend narrows this to the
        # count asked for; see LocalCompute.prepare_job.)
        "gpus": ["all"] if conf.resources.gpu and conf.resources.gpu.count.max != 0 else None,
        "entrypoint": conf.entrypoint,
        "user": conf.user,
        "privileged": conf.privileged or bool(conf.docker),
        "shm_size": conf.shm_size or (f"{conf.resources.shm_size:g}g" if conf.resources.shm_size else None),
        "registry_auth": {k: interpolate_secrets(v, secrets, f"registry_auth.{k}", env=user_env)
                          for k, v in conf.registry_auth.model_dump().items()} if conf.registry_auth else None,
        "code_key": code_key(run_spec.code_hash) if run_spec.code_hash else None,
        "code_target": code_target,
        "repo_clone": {"url": repo.url, "branch": repo.branch, "hash": repo.hash, "if_exists": repo.if_exists,
                       "single_branch": bool(conf.single_branch)} if repo and repo.url else None,
        "files_key": code_key(run_spec.files_hash) if run_spec.files_hash else None,
        "files": [{"path": container_target(f.container_path(), working_dir)} for f in conf.files],
        "heartbeat_interval": settings.heartbeat_interval,
        "metrics_interval": settings.metrics_interval,
        "utilization_floor": conf.utilization_policy.min_gpu_utilization if conf.utilization_policy else None,
        "stop_grace": stop_grace(conf),
        "instance_volumes": [{"instance_path": v.instance_path, "path": v.path, "optional": v.optional}
                             for v in conf.volumes if v.instance_path],
    }


def _gpus(conf: BaseRunConfiguration) -> int:
    gpu = conf.resources.gpu
    return (gpu.count.min or 0) if gpu and gpu.count.max != 0 else 0


def stage_job(compute: Compute, launch: JobLaunch, spec: dict[str, object],
               archives: dict[str, bytes], *, keep_instance: bool = False) -> dict[str, object]:
    """Put what the agent needs into the bucket of the backend about to run the job. On a fleet
    instance (`keep_instance`) the agent must not terminate its instance when the job ends."""
    storage = compute.storage
    for archive_hash, data in archives.items():  # the code and the `files`, content-addressed
        if not storage.exists(code_key(archive_hash)):
            storage.put(code_key(archive_hash), data)
    extras = compute.prepare_job(launch)
    if keep_instance:
        extras.pop("terminate", None)
    storage.put_json(f"{launch.job_prefix}/spec.json", {**spec, **extras, "secret_names": sorted(launch.secrets)})
    return extras
