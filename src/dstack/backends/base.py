"""The interface every backend implements: offers, launch, terminate, logs.

Each backend is a package with the same modules: `models.py` (its config form),
`configurator.py` (checks a config, returns choices for fields) and `compute.py`
(plus `logs.py` / `secrets.py` where the backend has such services).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from dstack.core.configurations import TaskConfiguration
from dstack.core.resources import ResourcesSpec
from dstack.core.runs import LogEvent, Offer
from dstack.storage import Storage
from dstack.storage.layout import log_chunk_key

MAX_LOG_CHUNKS_PER_PAGE = 20


class Requirements(BaseModel):
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    spot_policy: str = "on-demand"
    max_price: float | None = None
    python: str | None = None
    image: str | None = None
    regions: list[str] | None = None
    availability_zones: list[str] | None = None
    instance_types: list[str] | None = None
    reservation: str | None = None
    # `docker: true` (a privileged Docker-in-Docker container) and `nvcc: true` (the CUDA compiler).
    docker: bool = False
    nvcc: bool = False
    tags: dict[str, str] = Field(default_factory=dict)
    # A dev environment's `inactivity_duration`: the backend must start the job's own sshd to tell.
    inactivity_duration: int | None = None
    # Container fields set without `image` (`privileged`, `user`, …): a backend that runs such jobs
    # outside a container (local) must say it cannot honour them.
    container_fields: list[str] = Field(default_factory=list)
    # `volumes` with an instance path: directories of the machine that runs the job.
    instance_volumes: list[str] = Field(default_factory=list)
    # The run's user is a global admin of the server (the only one a backend may trust with
    # the server's own machine when it cannot isolate jobs).
    admin: bool = False


@dataclass(frozen=True)
class BackendContext:
    """What a backend may know about the server that hosts it."""

    project: str
    server_dir: Path
    # Orphaned instances younger than this are left alone: their launch may not be recorded yet.
    reaper_grace: float = 600.0
    # Paths no job on this machine may see (the local backend hides them from its jobs).
    private_paths: tuple[str, ...] = ()
    # The unprivileged user that local host jobs run as when the server runs as root.
    local_job_user: str = "nobody"
    # Where local jobs get their working directories.
    local_jobs_dir: Path | None = None
    # Where a local job's sshd listens.
    local_ssh_host: str = "127.0.0.1"


class VolumeLaunch(BaseModel):
    name: str
    volume_id: str
    availability_zone: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class JobLaunch(BaseModel):
    """What a backend needs to start an instance that runs one job."""

    job_id: str
    project: str
    run_name: str
    job_prefix: str
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)
    # Keys allowed to SSH into the instance (`dstack attach`), besides the server's own.
    ssh_public_keys: list[str] = Field(default_factory=list)
    # What the agent reads from the bucket (backends with no bucket credentials on the instance
    # hand out access to exactly these).
    read_keys: list[str] = Field(default_factory=list)
    max_duration: int | None = None
    # The job's image, if it runs in a container, and how many GPUs it asked for (at least).
    image: str | None = None
    gpu_count: int = 0
    # The Python version the job asked for (host jobs).
    python: str | None = None
    # What the job asked for explicitly (`cpu`, `memory`): a machine shared by jobs (local) keeps it for it.
    reserved_cpus: int = 0
    reserved_memory_gb: float = 0.0
    # The run's `tags`, for the cloud resources (the backend's own tags win a conflict, as upstream).
    tags: dict[str, str] = Field(default_factory=dict)
    availability_zones: list[str] | None = None
    # A fleet instance: `job_id` is the instance's id, `job_prefix` its prefix, `run_name` its name;
    # the agent stays and runs the jobs the server assigns there (agent/instance.py).
    fleet_instance: bool = False
    fleet: str | None = None
    # A cluster fleet's placement group (`placement: cluster`): its instances are launched into it.
    placement_group: str | None = None
    # A capacity reservation to launch into (`reservation`).
    reservation: str | None = None
    # The run's network volumes (a backend that mounts them at launch, such as Lambda's file
    # systems, names them in its launch request; AWS places the instance in their zone).
    volumes: list[VolumeLaunch] = Field(default_factory=list)


class ProvisionedVolume(BaseModel):
    """A network volume as the provider has it."""

    volume_id: str
    region: str
    availability_zone: str | None = None
    size_gb: float | None = None
    ready: bool = Field(default=True, description="False while the provider still creates it")
    data: dict[str, Any] = Field(default_factory=dict, description="backend-private, kept in the DB")


class InstanceCheck(BaseModel):
    """What the cloud says about a launched instance."""

    failure: str | None = Field(default=None, description="why the job must fail now (e.g. interrupted)")
    data: dict[str, Any] | None = Field(default=None, description="updated instance data (e.g. its IP)")
    booting: bool = Field(default=False, description="the provider still boots it (the provisioning clock waits)")


class LaunchedInstance(BaseModel):
    instance_id: str
    region: str
    data: dict[str, Any] = Field(default_factory=dict, description="backend-private, kept in the DB")


class LaunchIntent(BaseModel):
    """Recorded in the DB before a launch call, so that a server that dies before recording the
    result can find what it launched (by the job id it tagged the instance with)."""

    job_id: str
    job_prefix: str
    offer: Offer
    read_keys: list[str] = Field(default_factory=list)
    at: float = Field(description="unix time of the launch call")


class SSHJump(BaseModel):
    """The instance's own sshd, as a jump host to the job's sshd (see bootstrap.authorize_jump_keys)."""

    host: str
    port: int = 22
    user: str
    # A bastion in front of an instance without a public IP (the backend's `proxy_jump`), in
    # `ssh -J` form: [user@]host[:port].
    via: str | None = None


# On a cloud instance the job's sshd listens on its loopback at this port (upstream's too).
JOB_SSH_PORT = 10022


def cloud_ssh_extras(job: JobLaunch) -> dict[str, Any]:
    """Job spec entries of a cloud job: its sshd on the instance's loopback, and the instance's host
    keys published (pinned by the server and `dstack attach`). The container stays on the runtime's
    bridge network (its ports are forwarded to at its address): on the host network it would reach
    the instance's metadata service, and with it the instance role's credentials."""
    extras: dict[str, Any] = {"publish_host_keys": True}
    if job.ssh_public_keys:
        extras["ssh"] = {"listen": "127.0.0.1", "port": JOB_SSH_PORT, "keys": job.ssh_public_keys}
    return extras


class LaunchError(Exception):
    """The offer could not be launched; the scheduler tries the next one and records `reason`."""

    def __init__(self, reason: str, *, backend_wide: bool = False, skip_instance_type: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        # True when no other offer of the same backend can work either (e.g. no image).
        self.backend_wide = backend_wide
        # True when no other region of the same instance type can work either (e.g. a quota).
        self.skip_instance_type = skip_instance_type


class Compute(abc.ABC):
    TYPE: str
    storage: Storage
    # How long the provider may report an instance as booting before the job fails: the provisioning
    # timeout (DSTACK_PROVISIONING_TIMEOUT) counts only from when it is up.
    BOOT_TIMEOUT: float = 1200.0

    def unsupported(self, requirements: Requirements) -> str | None:
        """Why this backend can never serve `requirements` (None if it might)."""
        return None

    @abc.abstractmethod
    def get_offers(self, requirements: Requirements) -> list[Offer]:
        """Every candidate instance; the offers service filters and sorts them."""

    def multinode_unsupported(self) -> str | None:
        """Why this backend cannot launch a multi-node task's instances (None if it can: each node's
        LaunchedInstance has `private_ip` at once, and `availability_zone` where zones exist)."""
        return f"the {self.TYPE} backend cannot launch multi-node tasks yet (use an SSH fleet or AWS)"

    def clusters_unsupported(self) -> str | None:
        """Why this backend cannot place a fleet's instances together (`placement: cluster`)."""
        return f"the {self.TYPE} backend has no cluster placement"

    def delete_placement_group(self, *, name: str) -> None:
        """Remove a cluster fleet's placement group (BackendError while instances still use it)."""
        return None

    def fleets_unsupported(self) -> str | None:
        """Why this backend cannot launch fleet instances (None if it can: `launch` of a JobLaunch
        with `fleet_instance` starts an agent that waits for jobs, see agent/instance.py)."""
        return f"the {self.TYPE} backend has no fleets yet"

    # --- network volumes (`type: volume`) ------------------------------------------------------
    # True where a volume attaches to one instance at a time (EBS): runs wait for it.
    EXCLUSIVE_VOLUMES = False

    def volumes_unsupported(self, *, region: str | None = None) -> str | None:
        """Why this backend has no network volumes (in `region`); None if it has."""
        return f"the {self.TYPE} backend has no network volumes"

    def permissions_gap(self, *, features: set[str]) -> str | None:
        """For optional features that need more than the backend's base permissions ("volumes",
        "clusters"): what is missing and how to grant it; None when nothing is."""
        return None

    def create_volume(self, *, project: str, name: str, region: str, availability_zone: str | None,
                      size_gb: float, tags: dict[str, str], request_id: str) -> ProvisionedVolume:
        """Create it, or return the one an earlier call with the same `request_id` created."""
        raise NotImplementedError

    def register_volume(self, *, region: str, volume_id: str) -> ProvisionedVolume:
        """An existing volume (`volume_id`); raises BackendError naming it when it is not there."""
        raise NotImplementedError

    def volume_state(self, *, volume: ProvisionedVolume) -> ProvisionedVolume:
        """The volume now (`ready` once created); raises BackendError when it failed or is gone."""
        return volume

    def attach_volume(self, *, volume: ProvisionedVolume, instance: LaunchedInstance, device: str) -> bool:
        """Attach an exclusive volume; False: not yet possible (the instance still boots), try again."""
        return True

    def detach_volume(self, *, volume: ProvisionedVolume, instance_id: str) -> bool:
        """Detach it from `instance_id` if it is attached there; True once it is free."""
        return True

    def delete_volume(self, *, volume: ProvisionedVolume) -> None:
        raise NotImplementedError

    def volume_mount(self, *, volume: ProvisionedVolume, name: str, device: str) -> dict[str, Any]:
        """What the agent mounts (agent/volumes.py): {"kind": "block", "device", "serial"} or
        {"kind": "dir", "source"}."""
        raise NotImplementedError

    def prepare_job(self, job: JobLaunch) -> dict[str, Any]:
        """Backend-specific entries of the job spec (log destination, secret references, …)."""
        return {}

    @abc.abstractmethod
    def launch(self, *, job: JobLaunch, offer: Offer) -> LaunchedInstance: ...

    @abc.abstractmethod
    def terminate(self, *, instance: LaunchedInstance) -> None:
        """Tear the instance down; idempotent, safe to call on a gone instance."""

    def start_timeout_hint(self, *, instance: LaunchedInstance) -> str | None:
        """What may have kept a launched instance from ever reporting (shown with the timeout)."""
        return None

    def delete_secret(self, *, project: str, name: str) -> None:
        """Remove a deleted project secret from where the backend mirrored it (if anywhere)."""
        return None

    def find_launched(self, *, intent: LaunchIntent) -> LaunchedInstance | None:
        """The live instance launched for `intent.job_id`, if the launch got that far (found by the
        tag or name the launch gave it); None if nothing runs for it."""
        return None

    def check_instance(self, *, instance: LaunchedInstance) -> InstanceCheck:
        """Asked every few seconds while the job runs: detect preemption before heartbeats stop."""
        return InstanceCheck()

    @property
    def checks_instances(self) -> bool:
        """Whether `check_instance` asks anything (the reconciler calls it on a worker thread only then)."""
        return type(self).check_instance is not Compute.check_instance

    def reap(self, *, live_instance_ids: set[str], launching_job_ids: frozenset[str] = frozenset()) -> list[str]:
        """Terminate this backend's instances that no live job owns; returns their ids. An instance
        tagged with a job of `launching_job_ids` (a launch under way: not recorded yet) is not an
        orphan, however long the launch takes."""
        return []

    def ssh_jump(self, *, instance: LaunchedInstance) -> SSHJump | None:
        """How a user's `ssh` reaches the instance's own sshd, to jump from there to the job's sshd
        on the instance's loopback; None where the job's sshd is reachable directly (local). Raises
        InvalidStateError, saying why, where the instance cannot be reached (no public IP)."""
        return None

    def read_logs(self, *, job_prefix: str, spec_extras: dict[str, Any], next_token: str | None
                  ) -> tuple[list[LogEvent], str, bool]:
        """Log events after `next_token`: (events, next token, whether more may be ready now)."""
        return read_bucket_logs(self.storage, job_prefix, next_token)


def read_bucket_logs(storage: Storage, prefix: str, next_token: str | None) -> tuple[list[LogEvent], str, bool]:
    """Logs kept as numbered chunks in the bucket; the token is the next chunk number."""
    seq = int(next_token) if next_token and next_token.isdigit() else 0
    start_after = log_chunk_key(prefix, seq - 1) if seq > 0 else None
    keys = storage.list(f"{prefix}/logs/", start_after=start_after, limit=MAX_LOG_CHUNKS_PER_PAGE)
    events: list[LogEvent] = []
    for key in keys:
        data = storage.get(key) or b""
        for line in data.decode("utf-8", "replace").splitlines():
            item = json.loads(line)
            events.append(LogEvent(timestamp=item["t"], message=item["m"]))
        seq = int(key.rsplit("/", 1)[1].split(".")[0]) + 1
    return events, str(seq), len(keys) == MAX_LOG_CHUNKS_PER_PAGE


def cloud_gaps(requirements: Requirements) -> str | None:
    """What the cloud backends (a job in a container on its own instance) cannot serve yet."""
    if requirements.nvcc and not requirements.image:
        return ("`nvcc: true`: the default images have no CUDA compiler yet; use an image with one "
                "(e.g. `image: nvidia/cuda:12.8.1-devel-ubuntu24.04`)")
    return None


def job_image(configuration: Any) -> str | None:
    """The job's image: its own, or the Docker-in-Docker one for `docker: true`."""
    from dstack.backends.bootstrap import dind_image  # noqa: PLC0415

    return configuration.image or (dind_image() if getattr(configuration, "docker", None) else None)


def requirements_for(configuration: TaskConfiguration | Any, *, admin: bool = False) -> Requirements:
    return Requirements(
        admin=admin,
        resources=configuration.resources,
        spot_policy=configuration.spot_policy,
        max_price=configuration.max_price,
        python=configuration.python,
        image=job_image(configuration),
        regions=configuration.regions,
        availability_zones=getattr(configuration, "availability_zones", None),
        instance_types=getattr(configuration, "instance_types", None),
        reservation=getattr(configuration, "reservation", None),
        docker=bool(getattr(configuration, "docker", False)),
        nvcc=bool(getattr(configuration, "nvcc", False)),
        tags=getattr(configuration, "tags", None) or {},
        inactivity_duration=getattr(configuration, "inactivity_duration", None),
        instance_volumes=[v.instance_path for v in getattr(configuration, "volumes", None) or [] if v.instance_path],
        container_fields=[f for f in ("privileged", "user", "entrypoint", "shm_size", "registry_auth")
                          if getattr(configuration, f, None)] if not job_image(configuration) else [],
    )
