"""Pages of runs for `GET …/runs` (`dstack ps`, the web UI): the most often asked query of the API.

A page is read in two queries (its runs with their users' names, then their jobs) as plain rows, not
ORM objects (which would load each run's project, its members and backends); each run's spec goes
out as the JSON it is stored as (written by `RunSpec.model_dump_json` when submitted), and so do its
jobs' offers, attempts and history, instead of being parsed into models and serialized again: that
cost more than all the rest of the request. Services are the exception: their live state (replicas
ready, RPS) is added to the model. tests/server/test_run_listing.py holds the page to what the models
would write."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import String, and_, bindparam, func, literal_column, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.runs import JobStatus, Run, RunSpec
from dstack.server.models import JobModel, RunModel, UserModel
from dstack.server.services.projects import ProjectRef
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
    *, session: AsyncSession, project: ProjectRef, include_finished: bool, limit: int = 1000,
    before: datetime | None = None, user: str | None = None, backend: str | None = None,
    annotate: Callable[[Run], Run] = lambda run: run,
) -> bytes:
    """A JSON array of `Run`, newest first: a page of `limit`, submitted `before` a time if given."""
    sqlite = session.bind.dialect.name == "sqlite"
    query = _page(sqlite, include_finished=include_finished, before=before is not None, user=bool(user),
                  backend=bool(backend))
    params: dict[str, Any] = {"project_id": project.id, "limit": limit, "user": user, "backend": backend}
    if before is not None:
        params["before"] = before.astimezone(UTC) if before.tzinfo else before.replace(tzinfo=UTC)
    if sqlite:
        # SQLite writes each run's JSON itself (see _SQLITE_RUN_JSON); services, annotated with their
        # live state, go the way below.
        page = (await session.execute(query, params)).all()
        services = [row.id for row in page if row.is_service]
        annotated = {}
        if services:
            annotated = dict(zip(services, await _runs_json(session, project, services, annotate, sqlite=True),
                                 strict=True))
        return f"[{','.join(annotated[row.id] if row.is_service else row.json for row in page)}]".encode()
    rows = (await session.execute(query, params)).all()
    return f"[{','.join(await _rows_json(session, project, rows, annotate, sqlite=False))}]".encode()


@functools.cache
def _page(sqlite: bool, *, include_finished: bool, before: bool, user: bool, backend: bool) -> Any:
    """The page's statement for these filters, built once (it is asked on every `dstack ps`, and building
    a statement and its cache key cost as much as running it); the values are bound parameters."""
    columns = (RunModel.id, _IS_SERVICE, _SQLITE_RUN_JSON) if sqlite else _OTHER_COLUMNS[0]
    query = (select(*columns).join(UserModel, UserModel.id == RunModel.user_id)
             .where(RunModel.project_id == bindparam("project_id")))
    if before:
        query = query.where(RunModel.submitted_at < bindparam("before", type_=RunModel.submitted_at.type))
    if user:
        query = query.where(UserModel.name == bindparam("user"))
    if backend:
        query = query.where(RunModel.jobs.any(JobModel.backend == bindparam("backend")))
    if not include_finished:
        # Active runs, plus the latest run so a just-finished one is still shown.
        latest = select(func.max(RunModel.submitted_at)).where(RunModel.project_id == bindparam("project_id"))
        query = query.where(or_(RunModel.status.in_(ACTIVE_STATUSES),
                                and_(RunModel.submitted_at == latest.scalar_subquery())))
    return query.order_by(RunModel.submitted_at.desc()).limit(bindparam("limit"))


async def _runs_json(session: AsyncSession, project: ProjectRef, ids: list[str],
                     annotate: Callable[[Run], Run], *, sqlite: bool) -> list[str]:
    """These runs' JSON, in the order of `ids`, the way other databases' pages are written."""
    run_columns = (_SQLITE_COLUMNS if sqlite else _OTHER_COLUMNS)[0]
    rows = {row.id: row for row in (await session.execute(
        select(*run_columns).join(UserModel, UserModel.id == RunModel.user_id).where(RunModel.id.in_(ids))))}
    return await _rows_json(session, project, [rows[i] for i in ids], annotate, sqlite=sqlite)


async def _rows_json(session: AsyncSession, project: ProjectRef, rows: list[Any],
                     annotate: Callable[[Run], Run], *, sqlite: bool) -> list[str]:
    job_columns = (_SQLITE_COLUMNS if sqlite else _OTHER_COLUMNS)[1]
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
    return parts


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


def _sqlite_time(column: str) -> str:
    """`_time` in SQL: the stored text ("2026-11-27 13:42:54.632216") as pydantic writes the time."""
    return (f"CASE WHEN {column} IS NULL THEN 'null' WHEN length({column}) = 26 THEN '\"' || substr({column}, 1, 10)"
            f" || 'T' || substr({column}, 12, 8) || CASE WHEN substr({column}, 21) = '000000' THEN ''"
            f" ELSE '.' || substr({column}, 21) END || 'Z\"' ELSE '\"' || replace({column}, ' ', 'T') || 'Z\"' END")


def _sqlite_object(fields: list[tuple[str, str]]) -> str:
    """A JSON object, written by SQL: each value an SQL expression that gives JSON text."""
    return " || ',' || ".join(f"'{'{' if i == 0 else ''}\"{name}\":' || {value}"
                              for i, (name, value) in enumerate(fields)) + " || '}'"


_SQLITE_JOB_JSON = _sqlite_object([
    ("id", "json_quote(jobs.id)"), ("name", "json_quote(jobs.name)"), ("submission", "json_quote(jobs.submission)"),
    ("job_num", "json_quote(jobs.job_num)"), ("deployment", "json_quote(jobs.deployment)"),
    ("status", "json_quote(jobs.status)"), ("reason", "json_quote(jobs.reason)"),
    ("exit_code", "json_quote(jobs.exit_code)"), ("instance_id", "json_quote(jobs.instance_id)"),
    ("submitted_at", _sqlite_time("jobs.submitted_at")), ("started_at", _sqlite_time("jobs.started_at")),
    ("finished_at", _sqlite_time("jobs.finished_at")), ("offer", "coalesce(nullif(jobs.offer, ''), 'null')"),
    ("attempts", "jobs.attempts"), ("history", "jobs.history"),
])
# A page's runs as `_run_json` writes them, each written by SQLite (the spec and the jobs' stored JSON
# spliced in as they are): a page of 100 cost the server's one core ~5 ms in Python; the SQL runs
# in the database's thread, outside the event loop. json_quote escapes as json.dumps does (non-ASCII
# as it is); tests/server/test_run_listing.py holds the page to the models' JSON.
_SQLITE_RUN_JSON = literal_column(_sqlite_object([
    ("id", "json_quote(runs.id)"), ("name", "json_quote(runs.name)"),
    ("project", "(SELECT json_quote(projects.name) FROM projects WHERE projects.id = runs.project_id)"),
    ("user", "json_quote(users.name)"), ("status", "json_quote(runs.status)"), ("reason", "json_quote(runs.reason)"),
    ("exit_code", "json_quote(runs.exit_code)"), ("submitted_at", _sqlite_time("runs.submitted_at")),
    ("finished_at", _sqlite_time("runs.finished_at")),
    ("stop_requested", "CASE WHEN runs.stop_requested THEN 'true' ELSE 'false' END"),
    ("deployment", "json_quote(runs.deployment)"), ("service", "'null'"), ("spec", "runs.spec"),
    ("jobs", "'[' || coalesce((SELECT group_concat(job, ',') FROM (SELECT " + _SQLITE_JOB_JSON + " AS job FROM jobs"
             " WHERE jobs.run_id = runs.id ORDER BY jobs.submission, jobs.job_num)), '') || ']'"),
]), String).label("json")
_IS_SERVICE = (func.instr(RunModel.spec, SERVICE_SPEC_MARK) > 0).label("is_service")
