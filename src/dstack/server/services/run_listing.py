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
from types import SimpleNamespace
from typing import Any

from sqlalchemy import String, and_, func, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.runs import JobStatus, Run, RunSpec
from dstack.server.models import JobModel, ProjectModel, RunModel, UserModel
from dstack.server.services.run_status import SERVICE_SPEC_MARK
from dstack.server.services.runs import ACTIVE_STATUSES, job_to_model


def _columns(sqlite: bool) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The page's run and job columns; on SQLite the times as the stored text (see `_time`)."""
    def when(column: Any) -> Any:
        return type_coerce(column, String).label(column.key) if sqlite else column

    runs = (RunModel.id, RunModel.name, RunModel.status, RunModel.reason, RunModel.exit_code,
            when(RunModel.submitted_at), when(RunModel.finished_at), RunModel.spec, RunModel.stop_requested,
            RunModel.deployment, UserModel.name.label("user_name"))
    jobs = (JobModel.run_id, JobModel.id, JobModel.name, JobModel.submission, JobModel.job_num,
            JobModel.status, JobModel.deployment, JobModel.reason, JobModel.exit_code, JobModel.offer,
            JobModel.instance_id, JobModel.attempts, JobModel.history, when(JobModel.submitted_at),
            when(JobModel.started_at), when(JobModel.finished_at))
    return runs, jobs


_SQLITE_COLUMNS, _OTHER_COLUMNS = _columns(True), _columns(False)


async def list_runs_json(
    *, session: AsyncSession, project: ProjectModel, include_finished: bool, limit: int = 1000,
    before: datetime | None = None, user: str | None = None, backend: str | None = None,
    annotate: Callable[[Run], Run] = lambda run: run,
) -> bytes:
    """A JSON array of `Run`, newest first: a page of `limit`, submitted `before` a time if given."""
    run_columns, job_columns = _SQLITE_COLUMNS if session.bind.dialect.name == "sqlite" else _OTHER_COLUMNS
    query = (select(*run_columns).join(UserModel, UserModel.id == RunModel.user_id)
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
        job_rows = await session.execute(select(*job_columns).where(JobModel.run_id.in_(list(jobs)))
                                         .order_by(JobModel.run_id, JobModel.submission, JobModel.job_num))
        for job in job_rows:
            jobs[job.run_id].append(job)
    parts: list[str] = []
    for row in rows:
        if SERVICE_SPEC_MARK in row.spec:  # a service: annotated with its live state
            run = Run(id=row.id, name=row.name, project=project.name, user=row.user_name,
                      status=JobStatus(row.status), reason=row.reason, exit_code=row.exit_code,
                      submitted_at=_aware(row.submitted_at), finished_at=_aware(row.finished_at),
                      stop_requested=row.stop_requested, deployment=row.deployment,
                      spec=RunSpec.model_validate_json(row.spec),
                      jobs=[job_to_model(_with_aware_times(job)) for job in jobs[row.id]])
            parts.append(annotate(run).model_dump_json())
        else:
            parts.append(_run_json(row, project.name, jobs[row.id]))
    return f"[{','.join(parts)}]".encode()


def _aware(value: datetime | str | None) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _with_aware_times(job: Any) -> SimpleNamespace:
    """A job row for `job_to_model`, its times as datetimes (SQLite's are text here)."""
    data = dict(job._mapping)
    for name in ("submitted_at", "started_at", "finished_at"):
        data[name] = _aware(data[name])
    return SimpleNamespace(**data)


_string = json.encoder.encode_basestring  # the C escaper json.dumps uses, without its per-call setup


def _str(value: str | None) -> str:
    return "null" if value is None else _string(value)


def _int(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def _time(value: datetime | str | None) -> str:
    """As pydantic writes an aware UTC time. SQLite's column text ("2026-11-27 13:42:54.632216", UTC,
    as SQLAlchemy stores it) is rewritten as text: parsing it into a datetime only to format it again
    was a fifth of the page's cost."""
    if value is None:
        return "null"
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " " and value[19] == ".":
            micro = value[20:]
            return f'"{value[:10]}T{value[11:19]}{"" if micro == "000000" else "." + micro}Z"'
        value = _aware(value)
        assert value is not None
    return f'"{value.astimezone(UTC).isoformat().replace("+00:00", "Z")}"'


def _run_json(row: Any, project: str, jobs: list[Any]) -> str:
    """A `Run` as its model would write it, the stored JSON (spec, offers, attempts, history) spliced in."""
    return (f'{{"id":{_str(row.id)},"name":{_str(row.name)},"project":{_str(project)},"user":{_str(row.user_name)},'
            f'"status":{_str(row.status)},"reason":{_str(row.reason)},"exit_code":{_int(row.exit_code)},'
            f'"submitted_at":{_time(row.submitted_at)},"finished_at":{_time(row.finished_at)},'
            f'"stop_requested":{"true" if row.stop_requested else "false"},"deployment":{_int(row.deployment)},'
            f'"service":null,"spec":{row.spec},"jobs":[{",".join(_job_json(job) for job in jobs)}]}}')


def _job_json(job: Any) -> str:
    return (f'{{"id":{_str(job.id)},"name":{_str(job.name)},"submission":{_int(job.submission)},'
            f'"job_num":{_int(job.job_num)},"deployment":{_int(job.deployment)},"status":{_str(job.status)},'
            f'"reason":{_str(job.reason)},"exit_code":{_int(job.exit_code)},"instance_id":{_str(job.instance_id)},'
            f'"submitted_at":{_time(job.submitted_at)},"started_at":{_time(job.started_at)},'
            f'"finished_at":{_time(job.finished_at)},"offer":{job.offer or "null"},"attempts":{job.attempts},'
            f'"history":{job.history}}}')
