"""Multi-node runs as a whole, from their nodes as committed (one pass of the reconciler): the run's
status, its resubmission per `retry`, and the nodes' `startup_order`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from dstack.core.runs import JobStatus, RunSpec
from dstack.server.context import ServerContext
from dstack.server.models import JobModel, ProjectModel, RunModel, utcnow
from dstack.server.services.backends import compute_for
from dstack.server.services.run_status import SERVICE_SPEC_LIKE, aggregate_nodes, is_service
from dstack.server.services.runs import ACTIVE_STATUSES, master_job, new_job

# How long after a multi-node run failed its retry is still considered (its nodes' instances must be
# gone first, which takes seconds).
NODES_RETRY_WINDOW = timedelta(minutes=10)


async def settle_multinode_runs(ctx: ServerContext) -> None:
    """A multi-node run's status again from its nodes as committed: two nodes that changed at once
    (in two transactions) each saw the other's old status, so the last one to commit may have left
    the run behind (e.g. terminating with every node stopped). A failed one is resubmitted whole
    when its `retry` covers what happened, once every node's instance is gone."""
    now = utcnow()
    async with ctx.db.session() as session:
        runs = list(await session.scalars(
            select(RunModel).where(
                RunModel.id.in_(select(JobModel.run_id).where(JobModel.job_num > 0)),
                RunModel.spec.not_like(SERVICE_SPEC_LIKE),
                or_(RunModel.status.in_(ACTIVE_STATUSES),
                    and_(RunModel.status == JobStatus.FAILED.value, RunModel.finished_at > now - NODES_RETRY_WINDOW)))
            .options(selectinload(RunModel.jobs), selectinload(RunModel.project))))
        go: list[tuple[ProjectModel, str, str]] = []  # (project, backend, job prefix): nodes whose turn has come
        for run in runs:
            master = master_job(run)
            if master is None or is_service(run):  # a service's jobs are replicas (services/service_runs.py)
                continue
            if run.status == JobStatus.FAILED.value:
                await _retry_nodes(session, run, master.submission)
            else:
                aggregate_nodes(master, run, now)
                go += [(run.project, backend, prefix) for backend, prefix in _startup_turn(run, master.submission)]
        await session.commit()
    for project, backend, prefix in go:
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project, backend_type=backend)
        await asyncio.to_thread(compute.storage.put_json, f"{prefix}/start.json", {"t": now.timestamp()})


def _startup_turn(run: RunModel, submission: int) -> list[tuple[str, str]]:
    """`startup_order`: the nodes that wait (agent's start.json) and may start now: the workers once
    the master runs (`master-first`), the master once every worker runs (`workers-first`)."""
    order = RunSpec.model_validate_json(run.spec).configuration.startup_order
    if order not in ("master-first", "workers-first"):
        return []
    nodes = [j for j in run.jobs if j.submission == submission]
    running = {j.job_num for j in nodes if j.status == JobStatus.RUNNING.value}
    if order == "master-first":
        waiting = [j for j in nodes if j.job_num > 0] if 0 in running else []
    else:
        waiting = [j for j in nodes if j.job_num == 0] if all(j.job_num in running for j in nodes
                                                               if j.job_num > 0) else []
    return [(j.backend, j.storage_prefix) for j in waiting
            if j.status == JobStatus.PROVISIONING.value and j.backend]


async def _retry_nodes(session: AsyncSession, run: RunModel, submission: int) -> bool:
    """Every node again (a new submission) when the run's retry policy covers why a node failed."""
    conf = RunSpec.model_validate_json(run.spec).configuration
    retry = conf.retry
    nodes = [j for j in run.jobs if j.submission == submission]
    if retry is None or not all(JobStatus(j.status).finished and j.instance_terminated for j in nodes):
        return False
    failed = next((j for j in sorted(nodes, key=lambda j: j.job_num) if j.status == JobStatus.FAILED.value), None)
    if failed is None or (run.stop_requested and not (run.stop_reason or "").startswith("node ")):
        return False  # nothing failed, or the user stopped it
    reason = failed.reason or ""
    event = "interruption" if reason == "instance lost" or reason.startswith("interrupted") else "error"
    elapsed = (utcnow() - run.submitted_at).total_seconds()
    if event not in retry.on_events or (retry.duration is not None and elapsed > retry.duration):
        return False
    why = f"resubmitted after {event}: node {failed.job_num}: {reason}"
    # Compare-and-set: of several server replicas, one resubmits.
    won = await session.execute(
        update(RunModel).where(RunModel.id == run.id, RunModel.status == JobStatus.FAILED.value)
        .values(status=JobStatus.SUBMITTED.value, reason=why, finished_at=None, stop_requested=False,
                stop_reason=None).execution_options(synchronize_session=False))
    if won.rowcount != 1:
        return False
    run.status, run.reason, run.finished_at, run.stop_requested, run.stop_reason = (
        JobStatus.SUBMITTED.value, why, None, False, None)
    now = utcnow()
    for num in range(len(nodes)):
        session.add(new_job(run=run, project=run.project.name, submission=submission + 1, now=now, job_num=num))
    return True


