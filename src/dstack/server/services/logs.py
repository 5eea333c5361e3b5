"""Job logs and artifacts, read from the project's bucket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

from dstack.core.errors import ResourceNotFoundError
from dstack.core.runs import FINISHED_STATUSES, Artifact, JobStatus, LogEvent, LogPage
from dstack.server.models import JobModel, RunModel
from dstack.server.services.backends import project_storage
from dstack.server.settings import Settings
from dstack.storage import Storage
from dstack.storage.layout import artifact_key, log_chunk_key

MAX_CHUNKS_PER_PAGE = 20


def _job(run: RunModel, submission: int | None) -> JobModel:
    if not run.jobs:
        raise ResourceNotFoundError(f"run {run.name!r} has no jobs")
    if submission is None:
        return run.jobs[-1]
    for job in run.jobs:
        if job.submission == submission:
            return job
    raise ResourceNotFoundError(f"run {run.name!r} has no submission {submission}", field="submission")


async def get_logs(
    *, settings: Settings, run: RunModel, next_token: str | None, submission: int | None = None
) -> LogPage:
    """Log events after `next_token` (a chunk number). Chunks are immutable, so a token is stable."""
    job = _job(run, submission)
    # Read the status before listing: the agent writes its last chunk before its final status,
    # so if the job had finished by now, this listing is complete.
    finished = JobStatus(job.status) in FINISHED_STATUSES
    storage = project_storage(settings=settings, project=run.project.name)
    return await asyncio.to_thread(_read_logs, storage, job.storage_prefix, next_token, finished)


def _read_logs(storage: Storage, prefix: str, next_token: str | None, finished: bool) -> LogPage:
    seq = int(next_token) if next_token and next_token.isdigit() else 0
    start_after = log_chunk_key(prefix, seq - 1) if seq > 0 else None
    keys = storage.list(f"{prefix}/logs/", start_after=start_after, limit=MAX_CHUNKS_PER_PAGE)
    events: list[LogEvent] = []
    for key in keys:
        data = storage.get(key) or b""
        for line in data.decode("utf-8", "replace").splitlines():
            item = json.loads(line)
            events.append(LogEvent(timestamp=item["t"], message=item["m"]))
        seq = int(key.rsplit("/", 1)[1].split(".")[0]) + 1
    return LogPage(events=events, next_token=str(seq), finished=finished and len(keys) < MAX_CHUNKS_PER_PAGE)


async def list_artifacts(*, settings: Settings, run: RunModel, submission: int | None = None) -> list[Artifact]:
    job = _job(run, submission)
    storage = project_storage(settings=settings, project=run.project.name)
    prefix = artifact_key(job.storage_prefix, "")

    def _list() -> list[Artifact]:
        return [Artifact(path=k[len(prefix):], size=storage.size(k) or 0) for k in storage.list(prefix)]

    return await asyncio.to_thread(_list)


def open_artifact(*, settings: Settings, run: RunModel, path: str) -> Iterator[bytes]:
    job = _job(run, None)
    storage = project_storage(settings=settings, project=run.project.name)
    key = artifact_key(job.storage_prefix, path)
    if ".." in path.split("/") or not storage.exists(key):
        raise ResourceNotFoundError(f"run {run.name!r} has no artifact {path!r}", field="path")
    return storage.open_read(key)
