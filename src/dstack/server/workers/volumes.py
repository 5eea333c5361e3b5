"""Network volumes with the provider: submitted -> provisioning -> active (or failed); deleting ->
deleted. An exclusive volume (EBS) given to a job is attached once the job's instance exists and
detached when the job ends (or never launched), then given back."""

from __future__ import annotations

import asyncio
import json
import logging

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from dstack.backends.base import LaunchedInstance
from dstack.core.errors import BackendError
from dstack.core.runs import JobStatus
from dstack.core.volumes import VolumeStatus
from dstack.server.context import ServerContext
from dstack.server.models import JobModel, VolumeModel
from dstack.server.services.backends import compute_for
from dstack.server.services.run_status import set_job_status
from dstack.server.services.volumes import provisioned
from dstack.server.workers.common import for_each, release_lease, try_lease, under_lease

logger = logging.getLogger("dstack.server.volumes")
_FOLLOWED = [VolumeStatus.SUBMITTED.value, VolumeStatus.PROVISIONING.value, VolumeStatus.DELETING.value]


async def process_volumes_once(ctx: ServerContext) -> None:
    async with ctx.db.session() as session:
        ids = list(await session.scalars(select(VolumeModel.id).where(
            VolumeModel.status.in_(_FOLLOWED) | VolumeModel.job_id.is_not(None))))
        await session.commit()
    await for_each(ids, lambda volume_id: under_lease(ctx, volume_id, model=VolumeModel, what="volume",
                                                      step=lambda i: _step(ctx, i)))


async def _step(ctx: ServerContext, volume_id: str) -> None:
    async with ctx.db.session() as session:
        volume = (await session.scalars(select(VolumeModel).where(VolumeModel.id == volume_id))).one()
        project = volume.project
        await session.refresh(project, ["backends"])
        status, backend = VolumeStatus(volume.status), volume.backend
        job = await session.get(JobModel, volume.job_id) if volume.job_id else None
        job_state = (job.status, job.instance, job.instance_terminated) if job is not None else None
        await session.commit()
    try:
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project, backend_type=backend)
    except Exception as exc:  # the backend was deleted: nothing can be done with the provider any more
        if status in (VolumeStatus.SUBMITTED, VolumeStatus.PROVISIONING, VolumeStatus.DELETING):
            await _update(ctx, volume_id, status=VolumeStatus.FAILED if status != VolumeStatus.DELETING
                          else VolumeStatus.DELETED, reason=str(exc))
        return
    if status == VolumeStatus.SUBMITTED:
        await _create(ctx, volume_id, compute)
    elif status == VolumeStatus.PROVISIONING:
        await _poll(ctx, volume_id, compute)
    elif status == VolumeStatus.DELETING:
        await _delete(ctx, volume_id, compute)
    if volume.job_id:
        await _follow_attachment(ctx, volume_id, compute, job_state)


async def _update(ctx: ServerContext, row_id: str, /, **values: object) -> None:
    async with ctx.db.session() as session:
        volume = await session.get(VolumeModel, row_id)
        assert volume is not None
        for key, value in values.items():
            setattr(volume, key, value.value if isinstance(value, VolumeStatus) else value)
        await session.commit()


async def _create(ctx: ServerContext, volume_id: str, compute: object) -> None:
    async with ctx.db.session() as session:
        volume = await session.get(VolumeModel, volume_id)
        assert volume is not None
        name, project, region, zone = volume.name, volume.project.name, volume.region, volume.availability_zone
        size, external_id = volume.size_gb, volume.volume_id if volume.external else None
        tags = json.loads(volume.spec)["configuration"].get("tags") or {}
        await session.commit()
    try:
        if external_id:
            made = await asyncio.to_thread(compute.register_volume, region=region,  # type: ignore[attr-defined]
                                           volume_id=external_id)
        else:
            # Idempotent by the row's id: a pass that dies after the provider created it finds it again.
            made = await asyncio.to_thread(compute.create_volume, project=project,  # type: ignore[attr-defined]
                                           name=name, region=region, availability_zone=zone,
                                           size_gb=size or 0, tags=tags, request_id=volume_id)
    except BackendError as exc:
        await _update(ctx, volume_id, status=VolumeStatus.FAILED, reason=str(exc))
        return
    await _update(ctx, volume_id, volume_id=made.volume_id, availability_zone=made.availability_zone,
                  size_gb=made.size_gb, data=json.dumps(made.data),
                  status=VolumeStatus.ACTIVE if made.ready else VolumeStatus.PROVISIONING, reason=None)


async def _poll(ctx: ServerContext, volume_id: str, compute: object) -> None:
    async with ctx.db.session() as session:
        volume = await session.get(VolumeModel, volume_id)
        assert volume is not None
        current = provisioned(volume)
        await session.commit()
    try:
        state = await asyncio.to_thread(compute.volume_state, volume=current)  # type: ignore[attr-defined]
    except BackendError as exc:
        await _update(ctx, volume_id, status=VolumeStatus.FAILED, reason=str(exc))
        return
    if state.ready:
        await _update(ctx, volume_id, status=VolumeStatus.ACTIVE, size_gb=state.size_gb)


async def _delete(ctx: ServerContext, volume_id: str, compute: object) -> None:
    async with ctx.db.session() as session:
        volume = await session.get(VolumeModel, volume_id)
        assert volume is not None
        current, external, attached = provisioned(volume), volume.external, volume.job_id is not None
        await session.commit()
    if attached:
        return  # detached first (below), then deleted
    if current.volume_id and not external:
        try:
            await asyncio.to_thread(compute.delete_volume, volume=current)  # type: ignore[attr-defined]
        except BackendError as exc:
            await _update(ctx, volume_id, reason=str(exc))  # tried again on the next pass
            return
    await _update(ctx, volume_id, status=VolumeStatus.DELETED, reason=None)


async def _follow_attachment(ctx: ServerContext, volume_id: str, compute: object,
                             job_state: tuple[str, str | None, bool] | None) -> None:
    async with ctx.db.session() as session:
        volume = await session.get(VolumeModel, volume_id)
        assert volume is not None
        attachment = json.loads(volume.attachment or "{}")
        current = provisioned(volume)
        await session.commit()
    job_status, raw_instance, terminated = job_state or (None, None, True)
    instance = LaunchedInstance.model_validate_json(raw_instance) if raw_instance else None
    ended = job_status is None or JobStatus(job_status).finished or job_status == JobStatus.SUBMITTED.value
    if not ended and instance is not None and attachment.get("state") == "attaching":
        try:
            done = await asyncio.to_thread(compute.attach_volume, volume=current,  # type: ignore[attr-defined]
                                           instance=instance, device=attachment["device"])
        except BackendError as exc:  # not a matter of time (denied, a volume gone): the job cannot start
            await _fail_job(ctx, volume.job_id, f"volumes: {exc}")
            return
        if done:
            attachment.update(state="attached", instance_id=instance.instance_id)
            await _update(ctx, volume_id, attachment=json.dumps(attachment))
        return
    if not ended:
        return
    # The job is over (or waits again without an instance): detach from where it was, then free it.
    instance_id = attachment.get("instance_id") or (instance.instance_id if instance else None)
    if instance_id:
        try:
            free = await asyncio.to_thread(compute.detach_volume, volume=current,  # type: ignore[attr-defined]
                                           instance_id=instance_id)
        except BackendError as exc:
            logger.warning("detaching volume %s: %s", volume_id, exc)
            return
        if not free:
            if attachment.get("state") != "detaching":
                attachment["state"] = "detaching"
                await _update(ctx, volume_id, attachment=json.dumps(attachment))
            return
    await _update(ctx, volume_id, job_id=None, attachment=None)
    ctx.scheduler_wake.set()  # a run may wait for it


async def _fail_job(ctx: ServerContext, job_id: str | None, reason: str) -> None:
    """The job ends failed (the reconciler then tears its instance down); under the job's lease."""
    if job_id is None or not await try_lease(ctx, job_id):
        return
    try:
        async with ctx.db.session() as session:
            job = (await session.scalars(select(JobModel).where(JobModel.id == job_id)
                                         .options(selectinload(JobModel.run)))).one()
            if not JobStatus(job.status).finished:
                set_job_status(job, job.run, JobStatus.FAILED, reason=reason)
            await session.commit()
    finally:
        await release_lease(ctx, job_id)
    ctx.reconciler_wake.set()
