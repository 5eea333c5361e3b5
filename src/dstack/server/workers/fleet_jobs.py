"""Jobs on fleet instances: the scheduler takes an idle instance that fits (one compare-and-set,
so two runs never take the same one), stages the job in its backend's bucket and assigns it to the
instance's agent; the reconciler gives the instance back when the job ends."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from dstack.backends.base import JobLaunch, LaunchedInstance, Requirements
from dstack.core.fleets import InstanceStatus, instance_name
from dstack.core.runs import JobStatus, Offer, ProvisioningAttempt
from dstack.server.context import ServerContext
from dstack.server.models import FleetModel, InstanceModel, JobModel, ProjectModel, RunModel, utcnow
from dstack.server.services.backends import compute_for
from dstack.server.services.fleets import instance_fits
from dstack.server.services.job_specs import stage_job
from dstack.server.services.runs import set_job_status

logger = logging.getLogger("dstack.server.scheduler")
# A job that ended so: the instance is gone or broken, not given back to the fleet.
_INSTANCE_GONE = ("instance lost", "interrupted", "the instance did not")


async def take_fleet_instance(ctx: ServerContext, *, job_id: str, project: ProjectModel,
                              requirements: Requirements, backend_types: list[str],
                              fleets: list[str] | None) -> InstanceModel | None:
    """The cheapest idle instance of the project's fleets that fits, now busy with this job."""
    async with ctx.db.session() as session:
        candidates = list(await session.scalars(
            select(InstanceModel).join(FleetModel, FleetModel.id == InstanceModel.fleet_id)
            .where(InstanceModel.project_id == project.id, InstanceModel.status == InstanceStatus.IDLE.value,
                   FleetModel.deleted.is_(False))
            .order_by(InstanceModel.price, InstanceModel.created_at)))
        await session.commit()
    for instance in candidates:
        if not instance_fits(instance, instance.fleet, requirements=requirements, backend_types=backend_types,
                             fleets=fleets):
            continue
        async with ctx.db.session() as session:
            taken = await session.execute(
                update(InstanceModel)
                .where(InstanceModel.id == instance.id, InstanceModel.status == InstanceStatus.IDLE.value)
                .values(status=InstanceStatus.BUSY.value, job_ids=json.dumps([job_id]), idle_since=None)
                .execution_options(synchronize_session=False))
            await session.commit()
        if taken.rowcount == 1:
            return instance
    return None


async def run_on_fleet_instance(ctx: ServerContext, *, job_id: str, project: ProjectModel, instance: InstanceModel,
                                launch: JobLaunch, spec: dict[str, Any], archives: dict[str, bytes]) -> None:
    compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                          backend_type=instance.backend)
    offer = Offer.model_validate_json(instance.offer)
    name = instance_name(instance.fleet.name, instance.num)
    try:
        extras = await asyncio.to_thread(stage_job, compute, launch, spec, archives, keep_instance=True)
        await asyncio.to_thread(compute.storage.put_json, f"{instance.storage_prefix}/jobs.json",
                                {"jobs": [{"id": job_id, "prefix": launch.job_prefix}]})
    except Exception as exc:
        logger.exception("assigning job %s to fleet instance %s failed", job_id, name)
        await release_fleet_instance(ctx, instance_id=instance.id, job_id=job_id, reason=None)
        async with ctx.db.session() as session:
            job = await _load_job(session, job_id)
            set_job_status(job, job.run, JobStatus.FAILED, reason=f"could not assign the job to {name}: {exc}")
            await session.commit()
        return
    launched = LaunchedInstance.model_validate_json(instance.instance)
    launched.data["spec_extras"] = extras
    attempt = ProvisioningAttempt(at=utcnow(), backend=offer.backend, region=offer.region,
                                  instance_type=offer.instance_type, price=offer.price, spot=offer.spot, ok=True,
                                  reason=f"reused fleet instance {name}")
    async with ctx.db.session() as session:
        job = await _load_job(session, job_id)
        job.attempts = json.dumps(json.loads(job.attempts) + [attempt.model_dump(mode="json")])
        job.backend = offer.backend
        job.offer = offer.model_dump_json()
        job.price = offer.price
        job.instance_id = launched.instance_id
        job.instance = launched.model_dump_json()
        job.instance_terminated = False
        job.fleet_instance_id = instance.id
        job.heartbeat_at = utcnow()
        set_job_status(job, job.run, JobStatus.PROVISIONING)
        await session.commit()
    ctx.reconciler_wake.set()


async def release_fleet_instance(ctx: ServerContext, *, instance_id: str, job_id: str, reason: str | None) -> None:
    """The job ended: its instance is idle again (its idle time starts now), unless the job ended
    because the instance was lost, which the fleet then terminates."""
    gone = bool(reason) and reason.startswith(_INSTANCE_GONE)
    async with ctx.db.session() as session:
        instance = await session.get(InstanceModel, instance_id)
        if instance is None:
            return
        jobs = [j for j in json.loads(instance.job_ids or "[]") if j != job_id]
        instance.job_ids = json.dumps(jobs)
        if instance.status == InstanceStatus.BUSY.value and not jobs:
            if gone:
                instance.status = InstanceStatus.TERMINATING.value
                instance.reason = reason
            else:
                instance.status = InstanceStatus.IDLE.value
                instance.idle_since = instance.heartbeat_at = utcnow()
        await session.commit()
        storage_prefix, backend, project = instance.storage_prefix, instance.backend, instance.fleet.project
    if not gone and backend:
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project, backend_type=backend)
        try:
            await asyncio.to_thread(compute.storage.put_json, f"{storage_prefix}/jobs.json", {"jobs": []})
        except Exception:  # the agent ignores jobs it has run already: a stale list is harmless
            logger.warning("clearing the jobs of fleet instance %s failed", instance_id, exc_info=True)
    ctx.fleets_wake.set()
    ctx.scheduler_wake.set()


async def _load_job(session: Any, job_id: str) -> JobModel:
    return (await session.scalars(select(JobModel).where(JobModel.id == job_id)
                                  .options(selectinload(JobModel.run).selectinload(RunModel.project)))).one()
