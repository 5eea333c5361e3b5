"""Pages of runs for `GET …/runs` (`dstack ps`, the web UI): the most often asked query of the API.

A page is read in two queries (its runs with their users' names, then their jobs) as plain rows, not
ORM objects (which would load each run's project, its members and backends); each run's spec goes
out as the JSON it is stored as (written by `RunSpec.model_dump_json` when submitted), and so do its
jobs' offers, attempts and history, instead of being parsed into models and serialized again: that
cost more than all the rest of the request. Services are the exception: their live state (replicas
ready, RPS) is added to the model. tests/server/test_run_listing.py holds the page to what the models
would write."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.runs import JobStatus, Run, RunSpec
from dstack.server.models import JobModel, ProjectModel, RunModel, UserModel
from dstack.server.services.run_status import SERVICE_SPEC_MARK
from dstack.server.services.runs import ACTIVE_STATUSES, job_to_model

_RUN_COLUMNS = (RunModel.id, RunModel.name, RunModel.status, RunModel.reason, RunModel.exit_code,
                RunModel.submitted_at, RunModel.finished_at, RunModel.spec, RunModel.stop_requested,
                RunModel.deployment, UserModel.name.label("user_name"))
_JOB_COLUMNS = (JobModel.run_id, JobModel.id, JobModel.name, JobModel.submission, JobModel.job_num,
                JobModel.status, JobModel.deployment, JobModel.reason, JobModel.exit_code, JobModel.offer,
                JobModel.instance_id, JobModel.attempts, JobModel.history, JobModel.submitted_at,
                JobModel.started_at, JobModel.finished_at)


async def list_runs_json(
    *, session: AsyncSession, project: ProjectModel, include_finished: bool, limit: int = 1000,
    before: datetime | None = None, user: str | None = None, backend: str | None = None,
    annotate: Callable[[Run], Run] = lambda run: run,
) -> bytes:
    """A JSON array of `Run`, newest first: a page of `limit`, submitted `before` a time if given."""
    query = (select(*_RUN_COLUMNS).join(UserModel, UserModel.id == RunModel.user_id)
             .where(RunModel.project_id == project.id))
    if before is not None:
        query = query.where(RunModel.submitted_at < (before.astimezone(UTC) if before.tzinfo
                                                     else before.replace(tzinfo=UTC)))
    if user:
        query = query.where(UserModel.name == user)
    if backend:
        query = query.where(RunModel.jobs.any(JobModel.backend == backend))
    if not include_finished:
        # Active runs, plus the latest run so a just-finished one is still shown.
        latest = select(func.max(RunModel.submitted_at)).where(RunModel.project_id == project.id)
        query = query.where(or_(RunModel.status.in_(ACTIVE_STATUSES),
                                and_(RunModel.submitted_at == latest.scalar_subquery())))
    rows = (await session.execute(query.order_by(RunModel.submitted_at.desc()).limit(limit))).all()
    jobs: dict[str, list[Any]] = {row.id: [] for row in rows}
    if rows:
        job_rows = await session.execute(select(*_JOB_COLUMNS).where(JobModel.run_id.in_(list(jobs)))
                                         .order_by(JobModel.run_id, JobModel.submission, JobModel.job_num))
        for job in job_rows:
            jobs[job.run_id].append(job)
    parts: list[str] = []
    for row in rows:
        if SERVICE_SPEC_MARK in row.spec:  # a service: annotated with its live state
            run = Run(id=row.id, name=row.name, project=project.name, user=row.user_name,
                      status=JobStatus(row.status), reason=row.reason, exit_code=row.exit_code,
                      submitted_at=row.submitted_at, finished_at=row.finished_at, stop_requested=row.stop_requested,
                      deployment=row.deployment, spec=RunSpec.model_validate_json(row.spec),
                      jobs=[job_to_model(job) for job in jobs[row.id]])
            parts.append(annotate(run).model_dump_json())
        else:
            parts.append(_run_json(row, project.name, jobs[row.id]))
    return f"[{','.join(parts)}]".encode()


def _time(value: datetime | None) -> str | None:
    """As pydantic writes an aware UTC time."""
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _dumps(fields: dict[str, Any]) -> str:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def _run_json(row: Any, project: str, jobs: list[Any]) -> str:
    """A `Run` as its model would write it, the stored JSON (spec, offers, attempts, history) spliced in."""
    head = _dumps({"id": row.id, "name": row.name, "project": project, "user": row.user_name, "status": row.status,
                   "reason": row.reason, "exit_code": row.exit_code, "submitted_at": _time(row.submitted_at),
                   "finished_at": _time(row.finished_at), "stop_requested": bool(row.stop_requested),
                   "deployment": row.deployment, "service": None})
    return f'{head[:-1]},"spec":{row.spec},"jobs":[{",".join(_job_json(job) for job in jobs)}]}}'


def _job_json(job: Any) -> str:
    head = _dumps({"id": job.id, "name": job.name, "submission": job.submission, "job_num": job.job_num,
                   "deployment": job.deployment, "status": job.status, "reason": job.reason,
                   "exit_code": job.exit_code, "instance_id": job.instance_id,
                   "submitted_at": _time(job.submitted_at), "started_at": _time(job.started_at),
                   "finished_at": _time(job.finished_at)})
    return f'{head[:-1]},"offer":{job.offer or "null"},"attempts":{job.attempts},"history":{job.history}}}'
