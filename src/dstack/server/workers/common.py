from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value

from dstack.core.runs import JobStatus
from dstack.server.context import ServerContext
from dstack.server.models import JobModel, ProjectModel, RunModel, utcnow
from dstack.server.services.run_status import is_service, node_count
from dstack.server.services.runs import WAITING_FOR_CAPACITY

T = TypeVar("T")
LEASE = timedelta(seconds=15)
CONCURRENCY = 8
# Leases taken (and given back) in one statement each, this many rows at a time: few enough that a
# batch is done well within LEASE even when each row waits on a slow cloud call.
LEASE_BATCH = CONCURRENCY * 4


async def load_job(session: AsyncSession, job_id: str, *, run_jobs: bool = True) -> JobModel:
    """The job, its run with the run's project, user and the project's backends joined in the same
    statement, then the run's jobs (a run's status is made from all of them): two statements.
    `run_jobs=False`: as `load_jobs`, the run's jobs only where its status is made from several."""
    if run_jobs:
        return (await session.scalars(_LOAD_JOB, {"job_id": job_id})).unique().one()
    [job] = await load_jobs(session, [job_id])
    return job


async def load_jobs(session: AsyncSession, job_ids: list[str]) -> list[JobModel]:
    """The jobs with their runs, projects and backends in one statement, and the jobs of the runs
    whose status is made from several (a multi-node task, a service) in one more; a run of one job
    is followed by that job alone (`set_job_status`), so its `jobs` are not read and raise if asked.
    The session's identity map shares the objects."""
    if not job_ids:
        return []
    jobs = list((await session.scalars(_LOAD_JOBS_ALONE, {"job_ids": job_ids})).unique())
    runs = {job.run.id: job.run for job in jobs if node_count(job.run) > 1 or is_service(job.run)}
    if runs:
        by_run: dict[str, list[JobModel]] = {run_id: [] for run_id in runs}
        for job in await session.scalars(_RUNS_JOBS, {"run_ids": list(runs)}):
            by_run[job.run_id].append(job)
        for run_id, run in runs.items():
            set_committed_value(run, "jobs", by_run[run_id])
    return jobs


# Built once (a job is loaded several times on its way): a statement keeps its cache key, which for
# one with loader options cost as much to build as the rest of the call.
_LOAD_JOB = (select(JobModel).where(JobModel.id == bindparam("job_id"))
             .options(joinedload(JobModel.run).joinedload(RunModel.project).joinedload(ProjectModel.backends),
                      joinedload(JobModel.run).selectinload(RunModel.jobs)))
_LOAD_JOBS_ALONE = (select(JobModel).where(JobModel.id.in_(bindparam("job_ids", expanding=True)))
                    .options(joinedload(JobModel.run).joinedload(RunModel.project)
                             .joinedload(ProjectModel.backends), joinedload(JobModel.run).raiseload(RunModel.jobs)))
_RUNS_JOBS = (select(JobModel).where(JobModel.run_id.in_(bindparam("run_ids", expanding=True)))
              .order_by(JobModel.submission, JobModel.job_num))


# The lease statements, built once per table with bind parameters: each is run for every job at
# every step, and building it (and its cache key) cost a third of running it. They run on a plain
# connection, not an ORM session, which costs another third.
def lease_is_free(model: Any) -> Any:
    """No replica holds the row's lease (none taken, or run out by the bind parameter `now`)."""
    return or_(model.lock_until.is_(None), model.lock_until < bindparam("now"))


@functools.cache
def _lease_statements(model: Any) -> tuple[Any, Any, Any, Any]:
    free = lease_is_free(model)
    take = {"lock_owner": bindparam("owner"), "lock_until": bindparam("until")}
    give_back = {"lock_owner": None, "lock_until": None}
    return (
        update(model).where(model.id == bindparam("row_id"), free).values(**take),
        update(model).where(model.id == bindparam("row_id"), model.lock_owner == bindparam("owner"))
        .values(**give_back),
        update(model).where(model.id.in_(bindparam("row_ids", expanding=True)), free).values(**take)
        .returning(model.id),
        update(model).where(model.id.in_(bindparam("row_ids", expanding=True)),
                            model.lock_owner == bindparam("owner")).values(**give_back),
    )


def _taking(ctx: ServerContext) -> dict[str, Any]:
    now = utcnow()
    return {"now": now, "owner": ctx.replica_id, "until": now + LEASE}


async def try_lease(ctx: ServerContext, job_id: str, *, model: Any = JobModel, **where: object) -> bool:
    """Take a short lease on a job (or a fleet instance: `model`); False if another replica (or
    step) holds it."""
    statement = _lease_statements(model)[0]
    if where:
        statement = statement.where(*(getattr(model, k) == v for k, v in where.items()))
    async with ctx.db.transaction() as conn:
        return (await conn.execute(statement, {"row_id": job_id, **_taking(ctx)})).rowcount == 1


async def release_lease(ctx: ServerContext, job_id: str, *, model: Any = JobModel) -> None:
    async with ctx.db.transaction() as conn:
        await conn.execute(_lease_statements(model)[1], {"row_id": job_id, "owner": ctx.replica_id})


async def record_intent(ctx: ServerContext, job_id: str, intent: Any) -> None:
    """Before a launch call: what is about to be launched (a LaunchIntent), committed, so that a
    crash cannot hide it (the reconciler finds the instance by it)."""
    async with ctx.db.transaction() as conn:
        await conn.execute(_RECORD_INTENT, {"row_id": job_id, "intent": intent.model_dump_json()})


# Every job waiting for capacity may be tried again at once (it was kept unclaimable until its next
# try): run when capacity was freed. Built once, as the lease statements.
WAKE_WAITING = (update(JobModel).where(JobModel.status == JobStatus.SUBMITTED.value,
                                       JobModel.reason.like(f"{WAITING_FOR_CAPACITY}%"))
                .values(lock_until=None, lock_owner=None))


async def wake_waiting_elsewhere(ctx: ServerContext, conn: AsyncConnection | AsyncSession) -> None:
    """Capacity was freed here: the jobs waiting for some are tried at once by every replica's
    scheduler. This process's own scheduler wakes them itself at its next pass (it counts the frees:
    `ctx.capacity_freed`, see scheduler.schedule_once), so with SQLite, where it is the only
    scheduler, there is nothing to write (a statement less for every job that ends)."""
    if not ctx.settings.is_sqlite:
        await conn.execute(WAKE_WAITING.execution_options(synchronize_session=False))


_RECORD_INTENT = update(JobModel).where(JobModel.id == bindparam("row_id")).values(launch_intent=bindparam("intent"))


async def lease_many(ctx: ServerContext, ids: list[str], *, model: Any = JobModel) -> list[str]:
    """Leases on many rows in one statement; returns those taken (the others are held elsewhere)."""
    if not ids:
        return []
    async with ctx.db.transaction() as conn:
        return list((await conn.execute(_lease_statements(model)[2], {"row_ids": ids, **_taking(ctx)})).scalars())


async def release_many(ctx: ServerContext, ids: list[str], *, model: Any = JobModel) -> None:
    if ids:
        async with ctx.db.transaction() as conn:
            await conn.execute(_lease_statements(model)[3], {"row_ids": ids, "owner": ctx.replica_id})


async def for_each_leased_batch(ctx: ServerContext, ids: list[str],
                                handle: Callable[[list[str]], Awaitable[None]], *, model: Any = JobModel) -> None:
    """`handle(batch)` for each batch of the rows of `ids` this replica can lease: one statement takes
    a batch's leases and one gives them back, instead of two for every row."""
    for start in range(0, len(ids), LEASE_BATCH):
        taken = await lease_many(ctx, ids[start:start + LEASE_BATCH], model=model)
        try:
            if taken:
                await handle(taken)
        finally:
            await release_many(ctx, taken, model=model)


async def for_each(items: Iterable[T], handle: Callable[[T], Awaitable[None]]) -> None:
    """`handle(item)` for every item, CONCURRENCY of them at a time."""
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def _one(item: T) -> None:
        async with semaphore:
            await handle(item)

    await asyncio.gather(*(_one(i) for i in items))


async def under_lease(ctx: ServerContext, row_id: str, *, model: Any, step: Callable[[str], Awaitable[None]],
                      what: str) -> None:
    """`step(row_id)` while holding the row's lease (skipped if another replica holds it); a failure
    is logged and tried again on the next pass."""
    if not await try_lease(ctx, row_id, model=model):
        return
    try:
        await step(row_id)
    except Exception:
        logging.getLogger("dstack.server.workers").exception("processing %s %s failed", what, row_id)
    finally:
        await release_lease(ctx, row_id, model=model)
