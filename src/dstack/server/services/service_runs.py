"""Services as a whole, from their replicas as committed (one pass of the reconciler): the run's
status, replicas replaced when they end on their own, scaled to what the autoscaler asks, and rolled
over to a new deployment one by one (a new replica first; an old one retired once the new is ready)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value

from dstack.core.runs import FINISHED_STATUSES, JobStatus, RunSpec
from dstack.server.context import ServerContext
from dstack.server.models import JobModel, RunModel, utcnow
from dstack.server.services.run_status import CRASH_LOOP, SERVICE_SPEC_LIKE, aggregate_replicas, is_service
from dstack.server.services.runs import ACTIVE_STATUSES, new_job

# A retired replica gets no new request from now; it is stopped after this (and once what it is
# answering is done), so that every server replica's proxy has stopped routing to it.
DRAIN_DELAY = timedelta(seconds=2)
# A replica that ends on its own this many times in a row, each within CRASH_WINDOW of its start,
# fails the service (instead of being replaced for ever).
CRASH_LIMIT = 3
CRASH_WINDOW = timedelta(minutes=10)


async def settle_service_runs(ctx: ServerContext) -> None:
    now = utcnow()
    changed = False
    async with ctx.db.session() as session:
        runs = list(await session.scalars(
            select(RunModel).where(RunModel.status.in_(ACTIVE_STATUSES), RunModel.spec.like(SERVICE_SPEC_LIKE))
            .options(selectinload(RunModel.jobs), selectinload(RunModel.project))))
        for run in runs:
            if not is_service(run):
                continue
            conf = RunSpec.model_validate_json(run.spec).configuration
            desired = None
            if not run.stop_requested and not _crash_loop(run):
                live = [j for j in run.jobs if not _finished(j) and j.stop_reason is None]
                desired = ctx.proxy.desired(run.id, conf, len(live))
                if desired is not None:
                    changed |= await _scale_and_roll(session, ctx, run, desired, now)
            aggregate_replicas(run, now, scaled_to_zero=desired == 0)
        await session.commit()
    if changed:
        ctx.scheduler_wake.set()


def _finished(job: JobModel) -> bool:
    return JobStatus(job.status) in FINISHED_STATUSES


def _crash_loop(run: RunModel) -> bool:
    """A replica number whose last CRASH_LIMIT jobs all ended on their own soon after starting: the
    service stops, failed, saying why (its last reason)."""
    by_num: dict[int, list[JobModel]] = {}
    for job in run.jobs:
        by_num.setdefault(job.job_num, []).append(job)
    for num, jobs in by_num.items():
        jobs.sort(key=lambda j: j.submission)
        streak = []
        for job in reversed(jobs):
            started = job.started_at or job.submitted_at
            quick = job.finished_at is not None and job.finished_at - started < CRASH_WINDOW
            if job.status in (JobStatus.FAILED.value, JobStatus.DONE.value) and job.stop_reason is None and quick:
                streak.append(job)
            else:
                break
        if len(streak) >= CRASH_LIMIT:
            last = streak[0]
            what = f"failed: {last.reason}" if last.status == JobStatus.FAILED.value and last.reason else \
                f"exited with code {last.exit_code}" if last.exit_code is not None else last.status
            run.stop_requested = True
            run.stop_reason = f"{CRASH_LOOP}{num} ended {len(streak)} times in a row ({what})"
            return True
    return False


async def _scale_and_roll(session: AsyncSession, ctx: ServerContext, run: RunModel, desired: int,
                          now: datetime) -> bool:
    """Add and retire replicas toward `desired` of the current deployment; True if anything changed."""
    live = [j for j in run.jobs if not _finished(j)]
    serving = [j for j in live if j.stop_reason is None]
    new = [j for j in serving if j.deployment == run.deployment]
    old = [j for j in serving if j.deployment != run.deployment]
    ready = ctx.proxy.is_ready
    changed = False
    # One replica over the count while rolling over: the new one starts before an old one goes.
    room = desired + (1 if old else 0) - len(serving)
    for _ in range(max(0, min(desired - len(new), room))):
        _add_replica(run, live, now)
        changed = True
    why = f"replaced by deployment {run.deployment}"
    for job in [j for j in old if not ready(j.id)]:  # serving nothing: nothing to wait for
        changed |= await _retire(session, ctx, run, job, why, now)
    ready_new = sum(1 for j in new if ready(j.id))
    old_ready = sorted((j for j in old if ready(j.id)), key=lambda j: -j.job_num)
    while old_ready and ready_new + len(old_ready) - 1 >= desired:
        changed |= await _retire(session, ctx, run, old_ready.pop(0), why, now)
    if len(new) > desired:  # scaled down: the ones not ready first, then the highest numbers
        extra = sorted(new, key=lambda j: (ready(j.id), -j.job_num))[:len(new) - desired]
        for job in extra:
            changed |= await _retire(session, ctx, run, job, "scaled down", now)
    return changed


def _add_replica(run: RunModel, live: list[JobModel], now: datetime) -> None:
    taken = {j.job_num for j in live}
    num = next(n for n in range(len(taken) + 1) if n not in taken)
    submission = max((j.submission for j in run.jobs if j.job_num == num), default=-1) + 1
    job = new_job(run=run, project=run.project.name, submission=submission, now=now, job_num=num,
                  deployment=run.deployment)
    run.jobs.append(job)
    live.append(job)


async def _retire(session: AsyncSession, ctx: ServerContext, run: RunModel, job: JobModel, reason: str,
                  now: datetime) -> bool:
    """Take the replica out of rotation now and stop it once drained (the reconciler sends the stop);
    one never launched is stopped here, if the scheduler has not claimed it meanwhile."""
    ctx.proxy.drain(job.id)
    if job.status == JobStatus.SUBMITTED.value:
        won = await session.execute(
            update(JobModel).where(JobModel.id == job.id, JobModel.status == JobStatus.SUBMITTED.value,
                                   (JobModel.lock_until.is_(None)) | (JobModel.lock_until < now))
            .values(status=JobStatus.STOPPED.value, reason=reason, stop_reason=reason, finished_at=now)
            .execution_options(synchronize_session=False))
        if won.rowcount == 1:
            for name, value in (("status", JobStatus.STOPPED.value), ("reason", reason), ("stop_reason", reason),
                                ("finished_at", now)):
                set_committed_value(job, name, value)
            return True
    job.stop_reason = reason
    job.stop_after = now + DRAIN_DELAY
    ctx.reconciler_wake.set()
    return True
