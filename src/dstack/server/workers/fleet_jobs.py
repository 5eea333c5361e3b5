"""Jobs on fleet instances: the scheduler takes an idle instance that fits (one compare-and-set,
so two runs never take the same one), stages the job in its backend's bucket and assigns it to the
instance's agent; the reconciler gives the instance back when the job ends."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from sqlalchemy import update

from dstack.backends.base import JobLaunch, LaunchedInstance, Requirements
from dstack.core.fleets import InstanceStatus, instance_name
from dstack.core.runs import JobStatus, Offer, ProvisioningAttempt
from dstack.server.context import ServerContext
from dstack.server.models import InstanceModel, ProjectModel, utcnow
from dstack.server.services.backends import compute_for
from dstack.server.services.fleets import allocate, instance_fits, takeable_instances
from dstack.server.services.job_specs import stage_job
from dstack.server.services.run_status import set_job_status
from dstack.server.services.runs import record_job_instance
from dstack.server.workers.common import load_job

logger = logging.getLogger("dstack.server.scheduler")
# A job that ended so: the instance is gone or broken, not given back to the fleet.
_INSTANCE_GONE = ("instance lost", "interrupted", "the instance did not")


async def take_fleet_instance(ctx: ServerContext, *, job_id: str, project: ProjectModel,
                              requirements: Requirements, backend_types: list[str],
                              fleets: list[str] | None) -> InstanceModel | None:
    """The cheapest instance of the project's fleets that fits, now holding this job: an idle one, or
    a host of an SSH fleet whose free CPUs, memory and GPUs still fit it (GPUs are not shared)."""
    async with ctx.db.session() as session:
        candidates = list(await session.scalars(*takeable_instances(project.id)))
        await session.commit()
    for instance in candidates:
        if not instance_fits(instance, instance.fleet, requirements=requirements, backend_types=backend_types,
                             fleets=fleets):
            continue
        allocations = json.loads(instance.allocations or "{}")
        share = allocate(Offer.model_validate_json(instance.offer), allocations, requirements)
        if share is None:
            continue
        jobs = json.loads(instance.job_ids or "[]")
        async with ctx.db.session() as session:
            # Compare-and-set on what was read: a parallel scheduler that took a share first wins.
            taken = await session.execute(
                update(InstanceModel)
                .where(InstanceModel.id == instance.id, InstanceModel.status == instance.status,
                       InstanceModel.job_ids == instance.job_ids)
                .values(status=InstanceStatus.BUSY.value, job_ids=json.dumps([*jobs, job_id]), idle_since=None,
                        allocations=json.dumps({**allocations, job_id: share}))
                .execution_options(synchronize_session=False))
            await session.commit()
        if taken.rowcount == 1:
            instance.allocations = json.dumps({**allocations, job_id: share})
            return instance
    return None


async def run_on_fleet_instance(ctx: ServerContext, *, job_id: str, project: ProjectModel, instance: InstanceModel,
                                launch: JobLaunch, spec: dict[str, Any], archives: dict[str, bytes]) -> None:
    compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                          backend_type=instance.backend)
    offer = Offer.model_validate_json(instance.offer)
    name = instance_name(instance.fleet.name, instance.num)
    share = json.loads(instance.allocations or "{}").get(job_id) or {}
    if instance.backend == "ssh" and spec.get("gpus"):  # its own GPUs of a shared host
        spec = {**spec, "gpus": share.get("gpus") or None}
    try:
        extras = await asyncio.to_thread(stage_job, compute, launch, spec, archives, keep_instance=True)
        await asyncio.to_thread(_add_assignment, compute.storage, instance.storage_prefix, job_id, launch.job_prefix)
    except Exception as exc:
        logger.exception("assigning job %s to fleet instance %s failed", job_id, name)
        await release_fleet_instance(ctx, instance_id=instance.id, job_id=job_id, reason=None)
        async with ctx.db.session() as session:
            job = await load_job(session, job_id)
            set_job_status(job, job.run, JobStatus.FAILED, reason=f"could not assign the job to {name}: {exc}")
            await session.commit()
        return
    launched = LaunchedInstance.model_validate_json(instance.instance)
    launched.data["spec_extras"] = extras
    attempt = ProvisioningAttempt(at=utcnow(), backend=offer.backend, region=offer.region,
                                  instance_type=offer.instance_type, price=offer.price, spot=offer.spot, ok=True,
                                  reason=f"reused fleet instance {name}")
    async with ctx.db.session() as session:
        job = await load_job(session, job_id)
        job.attempts = json.dumps(json.loads(job.attempts) + [attempt.model_dump(mode="json")])
        record_job_instance(job, offer, launched, fleet_instance_id=instance.id)
        await session.commit()
    ctx.reconciler_wake.set()


def _add_assignment(storage: Any, prefix: str, job_id: str, job_prefix: str) -> None:
    """One object per assigned job (a shared host runs several): no read-modify-write to race on."""
    storage.put_json(f"{prefix}/jobs/{job_id}.json", {"id": job_id, "prefix": job_prefix})


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
        instance.allocations = json.dumps({k: v for k, v in json.loads(instance.allocations or "{}").items()
                                           if k != job_id})
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
            await asyncio.to_thread(_remove_assignment, compute.storage, storage_prefix, job_id)
        except Exception:  # the agent ignores jobs it has run already: a stale list is harmless
            logger.warning("clearing the jobs of fleet instance %s failed", instance_id, exc_info=True)
    ctx.fleets_wake.set()
    ctx.scheduler_wake.set()


def _remove_assignment(storage: Any, prefix: str, job_id: str) -> None:
    storage.delete(f"{prefix}/jobs/{job_id}.json")

