"""The bucket for agents on SSH fleet hosts (through the server's SSH tunnel, storage/tunnel.py):
each agent's token opens its instance's prefix and the prefixes of the jobs assigned to it, reads
the code archives and the agent package, and nothing else."""

from __future__ import annotations

import json
import re

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.errors import AuthenticationError, ForbiddenError
from dstack.core.fleets import InstanceStatus
from dstack.core.runs import RunSpec
from dstack.server.crypto import Encryptor
from dstack.server.models import InstanceModel, JobModel, ProjectModel, RunModel
from dstack.server.services.repo_credentials import credentials_for, secret_name
from dstack.server.services.secrets import secret_values
from dstack.server.services.users import hash_token
from dstack.server.settings import Settings
from dstack.storage import Storage
from dstack.storage.local import DirectoryStorage

_JOB_KEY = re.compile(r"^dstack/runs/[^/]+/[^/]+/jobs/(?P<job>[^/]+)/(?P<name>.*)$")
_READ_ONLY_PREFIXES = ("dstack/code/", "dstack/agent/")
# What the server writes for a job: an agent reads these, never writes them.
_SERVER_WRITES = ("spec.json", "stop.json", "instance.json")


def project_bucket(settings: Settings, project: str) -> Storage:
    """The project's bucket on the server's machine (the local backend's and SSH fleets')."""
    return DirectoryStorage(settings.server_dir / "projects" / project / "bucket")


async def instance_for_token(*, session: AsyncSession, token: str | None) -> InstanceModel:
    if not token:
        raise AuthenticationError("an agent token is required")
    instance = await session.scalar(select(InstanceModel).where(InstanceModel.agent_token_hash == hash_token(token)))
    if instance is None or instance.status == InstanceStatus.TERMINATED.value:
        raise AuthenticationError("unknown or revoked agent token")
    return instance


async def check_access(*, session: AsyncSession, instance: InstanceModel, key: str, write: bool) -> None:
    if ".." in key.split("/") or key.startswith("/"):
        raise ForbiddenError(f"invalid key {key!r}")
    if key.startswith(instance.storage_prefix + "/"):
        return
    if key.startswith(_READ_ONLY_PREFIXES):
        if write:
            raise ForbiddenError(f"{key}: read-only for agents")
        return
    match = _JOB_KEY.match(key)
    if match is not None:
        job = await session.get(JobModel, match["job"])
        if job is not None and job.fleet_instance_id == instance.id and key.startswith(job.storage_prefix + "/"):
            if write and match["name"] in _SERVER_WRITES:
                raise ForbiddenError(f"{key}: written by the server only")
            return
    raise ForbiddenError(f"{key}: outside this instance's jobs")


def list_access_prefix(prefix: str) -> str:
    """Listings are checked like reads of their prefix (with a trailing slash)."""
    return prefix if prefix.endswith("/") else prefix + "/"


async def job_secrets(*, session: AsyncSession, encryptor: Encryptor, instance: InstanceModel,
                      job_id: str) -> dict[str, str]:
    """What the scheduler would hand a cloud job's agent: the project's secrets and the git
    credentials of its repo (under their reserved name), for an active job of this instance only."""
    job = await session.get(JobModel, job_id)
    if job is None or job.fleet_instance_id != instance.id or job.instance_terminated:
        raise ForbiddenError(f"job {job_id} does not run on this instance")
    run = await session.get(RunModel, job.run_id)
    assert run is not None
    values = await secret_values(session=session, encryptor=encryptor, project_id=instance.project_id)
    spec = RunSpec.model_validate_json(run.spec)
    repo = spec.configuration.repos[0] if spec.configuration.repos else None
    if repo is not None and repo.url:
        project = await session.get(ProjectModel, instance.project_id)
        credentials = await credentials_for(session=session, encryptor=encryptor, project=project, url=repo.url)
        if credentials:
            values[secret_name(repo.url)] = json.dumps(credentials)
    return values
