"""Job logs and artifacts, read through the backend that ran the job."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

from dstack.backends.base import Compute, LaunchedInstance
from dstack.core.errors import ResourceNotFoundError
from dstack.core.runs import FINISHED_STATUSES, Artifact, JobStatus, LogPage, RunMetrics
from dstack.server.context import ServerContext
from dstack.server.models import JobModel, RunModel, utcnow
from dstack.server.services.backends import compute_for
from dstack.storage.layout import artifact_key


def _job(run: RunModel, submission: int | None, job_num: int | None = None) -> JobModel:
    """A job of the run: of `submission` (default: the latest), node `job_num` (default: the master)."""
    if not run.jobs:
        raise ResourceNotFoundError(f"run {run.name!r} has no jobs")
    if submission is not None and not any(j.submission == submission for j in run.jobs):
        raise ResourceNotFoundError(f"run {run.name!r} has no submission {submission}", field="submission")
    # The latest job of that node (a service: of that replica; replicas come and go one by one).
    jobs = [j for j in run.jobs if submission is None or j.submission == submission]
    mine = [j for j in jobs if j.job_num == (job_num or 0)]
    if mine:
        return max(mine, key=lambda j: j.submission)
    nums = sorted({j.job_num for j in jobs})
    what = "replica" if '"service"' in run.spec else "node"
    raise ResourceNotFoundError(f"run {run.name!r} has no {what} {job_num} (it has {len(nums)}: "
                                f"{', '.join(map(str, nums))})", field="job",
                                fix=f"Pass a {what} number: {', '.join(map(str, nums))}")


def _compute(ctx: ServerContext, run: RunModel, job: JobModel) -> Compute | None:
    if job.backend is None:
        return None  # never launched: nothing logged, nothing saved
    return compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=run.project, backend_type=job.backend)


# How long after a job ended its reader waits for lines the agent wrote but the log store does not
# show yet (CloudWatch indexes events for search with a lag).
INGESTION_WAIT = timedelta(seconds=60)


def _split_token(token: str | None) -> tuple[int | None, str | None]:
    """Our token: "c{lines read so far}|{the backend's token}" (a bare backend token: count unknown)."""
    if token and token.startswith("c") and "|" in token:
        count, _, inner = token[1:].partition("|")
        if count.isdigit():
            return int(count), inner or None
    return (0, None) if not token else (None, token)


async def get_logs(*, ctx: ServerContext, run: RunModel, next_token: str | None,
                   submission: int | None = None, job_num: int | None = None) -> LogPage:
    job = _job(run, submission, job_num)
    # Read the status before the logs: the agent writes its last log line before its final status,
    # so if the job had finished by now, what we read next is complete, once the store shows all the
    # lines the agent says it wrote (or after INGESTION_WAIT).
    finished = JobStatus(job.status) in FINISHED_STATUSES
    count, inner = _split_token(next_token)
    compute = _compute(ctx, run, job)
    if compute is None:
        return LogPage(events=[], next_token=next_token or "", finished=finished)
    extras = LaunchedInstance.model_validate_json(job.instance).data.get("spec_extras", {}) if job.instance else {}
    events, token, more = await asyncio.to_thread(
        compute.read_logs, job_prefix=job.storage_prefix, spec_extras=extras, next_token=inner)
    if count is not None:
        count += len(events)
        if (finished and job.log_events is not None and count < job.log_events and job.finished_at
                and utcnow() - job.finished_at < INGESTION_WAIT):
            finished = False  # more lines are on their way
        token = f"c{count}|{token}"
    return LogPage(events=events, next_token=token, finished=finished and not more, more=more)


async def get_metrics(*, ctx: ServerContext, run: RunModel) -> RunMetrics:
    """The agent's latest samples (empty for a job that never started)."""
    job = _job(run, None)
    compute = _compute(ctx, run, job)
    if compute is None:
        return RunMetrics()
    data = await asyncio.to_thread(compute.storage.get_json, f"{job.storage_prefix}/metrics.json")
    if not isinstance(data, dict):
        return RunMetrics()
    return RunMetrics.model_validate({"samples": data.get("samples") or [], "gpu_low_for": data.get("gpu_low_for"),
                                      "ssh_inactive_for": data.get("ssh_inactive_for")})


async def list_artifacts(*, ctx: ServerContext, run: RunModel, submission: int | None = None) -> list[Artifact]:
    job = _job(run, submission)
    compute = _compute(ctx, run, job)
    if compute is None:
        return []
    storage = compute.storage
    prefix = artifact_key(job.storage_prefix, "")

    def _list() -> list[Artifact]:
        return [Artifact(path=k[len(prefix):], size=storage.size(k) or 0) for k in storage.list(prefix)]

    return await asyncio.to_thread(_list)


def open_artifact(*, ctx: ServerContext, run: RunModel, path: str) -> Iterator[bytes]:
    job = _job(run, None)
    compute = _compute(ctx, run, job)
    key = artifact_key(job.storage_prefix, path)
    if compute is None or ".." in path.split("/") or not compute.storage.exists(key):
        raise ResourceNotFoundError(f"run {run.name!r} has no artifact {path!r}", field="path")
    return compute.storage.open_read(key)
