"""submitted -> provisioning: find offers, write the job spec, launch the cheapest that works."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.backends.base import (
    JobLaunch,
    LaunchedInstance,
    LaunchError,
    LaunchIntent,
    job_image,
    requirements_for,
)
from dstack.core.errors import ConfigurationError, DstackError
from dstack.core.runs import JobStatus, Offer, ProvisioningAttempt, RunSpec
from dstack.server.context import ServerContext
from dstack.server.failpoints import failpoint
from dstack.server.models import BackendModel, JobModel, RunModel, utcnow
from dstack.server.services.backends import compute_for
from dstack.server.services.fleets import fleet_backend_types
from dstack.server.services.job_specs import build_job_spec, stage_job
from dstack.server.services.offers import find_offers
from dstack.server.services.repo_credentials import secret_name
from dstack.server.services.run_status import SERVICE_SPEC_LIKE, set_job_status
from dstack.server.services.runs import (
    WAITING_FOR_CAPACITY,
    backend_types_for,
    record_job_instance,
    reschedule,
)
from dstack.server.services.volumes import claim_volumes, network_volume_mounts, release_unlaunched, resolve_run_volumes
from dstack.server.workers.claims import ClaimedJob, claim_jobs, read_claimed, renew_claims
from dstack.server.workers.common import (
    WAKE_WAITING,
    for_each,
    load_job,
    record_intent,
    release_lease,
)
from dstack.server.workers.fleet_jobs import run_on_fleet_instance, take_fleet_instance
from dstack.server.workers.nodes import end_waiting_nodes, provision_nodes

logger = logging.getLogger("dstack.server.scheduler")
MAX_LAUNCH_ATTEMPTS = 10
CAPACITY_RETRY_DELAY = timedelta(seconds=15)
VOLUME_WAIT_DELAY = timedelta(seconds=3)


async def schedule_once(ctx: ServerContext) -> None:
    now = utcnow()
    freed = ctx.capacity_freed  # before reading the queue (see below)
    if freed != ctx.capacity_seen:
        # Capacity was freed since the last pass began: the jobs waiting for some are tried in this
        # one, by priority. (Here, not only where it was freed: a job refused after that was woken
        # there would wait its whole delay. The previous pass's refusals are all committed by now.)
        async with ctx.db.transaction() as conn:
            await conn.execute(WAKE_WAITING)
        ctx.capacity_seen = freed
    async with ctx.db.session() as session:
        # Higher `priority` first, then in submission order; a scheduled job once its time has come
        # (or at once when its run is being stopped).
        rows = list(await session.execute(
            select(JobModel.id, JobModel.priority).join(RunModel, RunModel.id == JobModel.run_id)
            .where(JobModel.status == JobStatus.SUBMITTED.value,
                   # A master schedules its nodes; a service's replicas are scheduled each on its own.
                   (JobModel.job_num == 0) | RunModel.spec.like(SERVICE_SPEC_LIKE),
                   (JobModel.lock_until.is_(None)) | (JobModel.lock_until < now),
                   JobModel.not_before.is_(None) | (JobModel.not_before <= now) | RunModel.stop_requested)
            .order_by(JobModel.priority.desc(), JobModel.submitted_at).limit(50)
        ))
    # One priority level at a time (its jobs at once): a higher one takes the capacity there is first.
    # Capacity freed during the pass (a job ended) goes to the queue read again, not to the levels left:
    # else a lower priority could take what a higher one was just refused for.
    for level in sorted({priority for _, priority in rows}, reverse=True):
        if ctx.capacity_freed != freed:
            ctx.scheduler_wake.set()
            return
        await _schedule_level(ctx, [job_id for job_id, priority in rows if priority == level], freed=freed,
                              outranked=_Outranked(priority=level))


async def _schedule_level(ctx: ServerContext, job_ids: list[str], *, freed: int, outranked: _Outranked) -> None:
    """One priority level: its jobs claimed in one statement, read in one session, their claims
    renewed by one task; then each provisioned on its own (CONCURRENCY at a time)."""
    claimed = await claim_jobs(ctx, job_ids)
    if not claimed:
        return
    failpoint("after-claim")
    ctx.provisioning.update(claimed)
    held = set(claimed)
    renewal = asyncio.create_task(renew_claims(ctx, held))
    try:
        try:
            loaded = await read_claimed(ctx, claimed)
        except Exception:  # each job is read again on its own, and fails on its own if it must
            logger.exception("reading the claimed jobs %s failed", ", ".join(claimed))
            loaded = {}
        await for_each(claimed, lambda j: _schedule(ctx, j, loaded.get(j), held=held, freed=freed,
                                                    outranked=outranked))
    finally:
        renewal.cancel()
        ctx.provisioning.difference_update(claimed)


@dataclass
class _Outranked:
    """Whether a job of a higher priority than this pass's level waits for capacity: asked once per
    level, and only if capacity was freed during the pass (see `_outranked`)."""
    priority: int
    answer: bool | None = None


async def _outranked(ctx: ServerContext, *, freed: int, outranked: _Outranked) -> bool:
    """Whether a job that found capacity should leave it to a higher priority: capacity was freed
    after this pass read the queue (so what the job found may be what just came free), and a job of
    a higher priority waits for capacity (it was refused before, still unclaimable until the next
    pass wakes it). The next pass, which reads the queue again, gives it to that job first."""
    if ctx.capacity_freed == freed:
        return False
    if outranked.answer is None:
        async with ctx.db.transaction() as conn:
            outranked.answer = (await conn.execute(_WAITING_ABOVE, {"priority": outranked.priority})).first() \
                is not None
    return outranked.answer


_WAITING_ABOVE = (select(JobModel.id)
                  .where(JobModel.status == JobStatus.SUBMITTED.value, JobModel.priority > bindparam("priority"),
                         JobModel.reason.like(f"{WAITING_FOR_CAPACITY}%")).limit(1))
_REQUEUE = (update(JobModel).where(JobModel.id == bindparam("row_id"), JobModel.status == JobStatus.PROVISIONING.value)
            .values(status=JobStatus.SUBMITTED.value, lock_owner=None, lock_until=None))


@dataclass
class _Claimed:
    """What `_provision` tells `_schedule` about the job it claimed."""
    multinode: bool = True  # until its spec says otherwise: nodes may wait on this master
    released: bool = False  # the launch's record gave the claim back in the same statement


async def _schedule(ctx: ServerContext, job_id: str, loaded: ClaimedJob | None, *, held: set[str], freed: int,
                    outranked: _Outranked) -> None:
    claimed = _Claimed()
    try:
        await _provision(ctx, job_id, loaded, freed=freed, outranked=outranked, claimed=claimed)
    except Exception as exc:
        logger.exception("provisioning job %s failed", job_id)
        claimed.released = False
        async with ctx.db.session() as session:
            job = await load_job(session, job_id)
            set_job_status(job, job.run, JobStatus.FAILED, reason=f"provisioning error: {exc}")
            await session.commit()
    finally:
        held.discard(job_id)
        ctx.provisioning.discard(job_id)
        if not claimed.released:
            await release_lease(ctx, job_id)
        if claimed.multinode:
            await end_waiting_nodes(ctx, job_id)


def _proxy_key(ctx: ServerContext, run_spec: RunSpec) -> str | None:
    """A service's replicas let in the server's own key: its proxy reaches them through SSH tunnels."""
    return ctx.proxy.public_key() if run_spec.configuration.type == "service" else None


async def _provision(ctx: ServerContext, job_id: str, loaded: ClaimedJob | None, *, freed: int,
                     outranked: _Outranked, claimed: _Claimed) -> None:
    if loaded is None:
        loaded = (await read_claimed(ctx, [job_id]))[job_id]
    job, run_spec, archives, secrets, credentials = (loaded.job, loaded.run_spec, loaded.archives, loaded.secrets,
                                                     loaded.credentials)
    run = job.run
    project = run.project
    claimed.multinode = getattr(run_spec.configuration, "nodes", 1) > 1
    if run.stop_requested or job.stop_reason:
        await _end(ctx, job_id, JobStatus.STOPPED)
        return
    backend_types = backend_types_for(project, run_spec)
    repo = run_spec.configuration.repos[0] if run_spec.configuration.repos else None

    requirements = requirements_for(run_spec.configuration, admin=run.user.global_role == "admin")
    try:
        spec = build_job_spec(settings=ctx.settings, run_spec=run_spec, run_name=run.name, run_id=run.id,
                              job_id=job_id, secrets=secrets)
    except ConfigurationError as exc:
        await _fail(ctx, job_id, str(exc))
        return
    launch_secrets = dict(secrets)
    if repo and repo.url and credentials:  # for the agent's clone only (see dstack/agent/workspace.py)
        launch_secrets[secret_name(repo.url)] = json.dumps(credentials)
    launch = JobLaunch(job_id=job_id, project=project.name, run_name=run.name, job_prefix=job.storage_prefix,
                       secrets=launch_secrets,
                       ssh_public_keys=[k for k in (run_spec.ssh_key_pub, _proxy_key(ctx, run_spec)) if k],
                       read_keys=[k for k in [spec.get("code_key"), spec.get("files_key")] if k],
                       max_duration=run_spec.configuration.max_duration, image=job_image(run_spec.configuration),
                       gpu_count=_gpu_count(run_spec), python=run_spec.configuration.python,
                       tags=run_spec.configuration.tags or {},
                       availability_zones=run_spec.configuration.availability_zones,
                       reservation=getattr(run_spec.configuration, "reservation", None), **_reserved(run_spec))
    volumes = None
    if network_volume_mounts(run_spec.configuration):
        try:  # where the run's volumes are is where it goes; an EBS volume is held by one job at a time
            # (Permissions were asked at plan time; a denied attach fails the job with EC2's answer.)
            volumes = await resolve_run_volumes(ctx=ctx, project=project, conf=run_spec.configuration,
                                                check_permissions=False)
        except DstackError as exc:
            await _fail(ctx, job_id, str(exc))
            return
        assert volumes is not None
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                              backend_type=volumes.backend)
        waiting = await claim_volumes(ctx=ctx, job_id=job_id, volumes=volumes, exclusive=compute.EXCLUSIVE_VOLUMES)
        if waiting:
            await _wait(ctx, job_id, waiting)
            return
        requirements = volumes.narrow(requirements)
        backend_types = [volumes.backend]
        spec["network_volumes"] = volumes.job_spec_entries(compute)
        launch.volumes = volumes.launches()
    if getattr(run_spec.configuration, "nodes", 1) > 1:  # every node at once, or none
        why = await provision_nodes(ctx, master_id=job_id, project=project, run_spec=run_spec, run_name=run.name,
                                    run_id=run.id, requirements=requirements, secrets=secrets, launch=launch,
                                    archives=archives, backend_types=backend_types)
        if why:
            await _no_capacity(ctx, job_id, why, run_spec)
        return
    # An idle fleet instance that fits comes first: no launch, no boot (looked for only where the
    # project had any when the level was read: most have none).
    reused = None if volumes or not loaded.fleet_instances else await take_fleet_instance(
        ctx, job_id=job_id, project=project, requirements=requirements,
        backend_types=fleet_backend_types(backend_types, run_spec.configuration.backends),
        fleets=run_spec.configuration.fleets)
    if reused is not None:
        await run_on_fleet_instance(ctx, job_id=job_id, project=project, instance=reused, launch=launch,
                                    spec=spec, archives=archives)
        return
    if run_spec.configuration.creation_policy == "reuse" or run_spec.configuration.fleets:
        named = ", ".join(run_spec.configuration.fleets or []) or "the project's fleets"
        why = (f"no idle instance of {named} fits the run (it may not create one: "
               f"{'fleets' if run_spec.configuration.fleets else 'creation_policy: reuse'})")
        await _no_capacity(ctx, job_id, why, run_spec)
        return
    search = await find_offers(ctx=ctx, project=project, backend_types=backend_types, requirements=requirements)
    if not search.offers:
        await _no_capacity(ctx, job_id, str(search.no_offers_error(requirements)), run_spec)
        return
    if await _outranked(ctx, freed=freed, outranked=outranked):
        await release_unlaunched(ctx=ctx, job_id=job_id)
        async with ctx.db.transaction() as conn:  # as it was before its claim, for the next pass
            await conn.execute(_REQUEUE, {"row_id": job_id})
        ctx.scheduler_wake.set()
        return
    attempts: list[ProvisioningAttempt] = []
    instance: LaunchedInstance | None = None
    broken_backends: set[str] = set()
    broken_types: set[tuple[str, str]] = set()
    for offer in search.offers[:MAX_LAUNCH_ATTEMPTS]:
        if offer.backend in broken_backends or (offer.backend, offer.instance_type) in broken_types:
            continue
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                              backend_type=offer.backend)
        try:
            extras = await asyncio.to_thread(stage_job, compute, launch, spec, archives)
            await record_intent(ctx, job_id, LaunchIntent(job_id=job_id, job_prefix=launch.job_prefix, offer=offer,
                                                           read_keys=launch.read_keys, at=time.time()))
            failpoint("before-launch")
            instance = await asyncio.to_thread(compute.launch, job=launch, offer=offer)
            failpoint("after-launch")
        except LaunchError as exc:
            attempts.append(_attempt(offer, ok=False, reason=exc.reason))
            if exc.backend_wide:
                # Not capacity: the backend cannot launch anything (denied, bad credentials, no
                # image). No other offer of it is tried for this run; the settings page says why.
                logger.warning("backend %s of project %s cannot launch: %s", offer.backend, project.name,
                               exc.reason)
                broken_backends.add(offer.backend)
            if exc.skip_instance_type:
                broken_types.add((offer.backend, offer.instance_type))
            continue
        instance.data["spec_extras"] = extras
        attempts.append(_attempt(offer, ok=True))
        break

    warnings_change = _warnings_change(project.backends, attempts, broken_backends)
    if instance is not None and not warnings_change and run_spec.configuration.type != "service":
        # Most launches: the job and its run as read above, written by two plain statements: under
        # this replica's claim nothing else writes the job, and the run's status follows this one job.
        # Only what changes here is written (another request may have asked the run to stop meanwhile:
        # that stays). The claim is given back with the record: from here the reconciler follows it.
        offer = _launched_offer(search.offers, attempts)
        record_job_instance(job, offer, instance)  # on the objects read above, in memory only
        async with ctx.db.transaction() as conn:
            await conn.execute(_RECORD_JOB, {
                "row_id": job_id, "new_attempts": _with_attempts(job.attempts, attempts),
                **{f"new_{column}": getattr(job, column) for column in _RECORDED_JOB_COLUMNS}})
            await conn.execute(_RECORD_RUN, {
                "row_id": run.id, **{f"new_{column}": getattr(run, column) for column in _RECORDED_RUN_COLUMNS}})
        claimed.released = True
        failpoint("after-record")
        ctx.reconciler_wake.set()
        return
    async with ctx.db.session() as session:
        if warnings_change:
            await _record_backend_warnings(session, project_id=project.id, attempts=attempts,
                                           broken=broken_backends)
        job = await load_job(session, job_id)  # a service's replicas are aggregated from all of them as they are
        job.attempts = _with_attempts(job.attempts, attempts)
        if instance is None:
            await session.commit()
            reasons = "; ".join(f"{a.backend}/{a.region}/{a.instance_type}: {a.reason}" for a in attempts)
            await _no_capacity(ctx, job_id, f"every offer failed to launch: {reasons}", run_spec)
            return
        record_job_instance(job, _launched_offer(search.offers, attempts), instance)
        job.lock_owner = job.lock_until = None  # the claim given back with the record
        await session.commit()
        claimed.released = True
    failpoint("after-record")
    ctx.reconciler_wake.set()


# The record of a launch (see `_provision`): what `record_job_instance` sets, built once.
_RECORDED_JOB_COLUMNS = ("backend", "offer", "price", "instance_id", "instance", "instance_terminated",
                         "fleet_instance_id", "heartbeat_at", "status", "reason", "history")
_RECORDED_RUN_COLUMNS = ("status", "reason", "exit_code", "finished_at")
_RECORD_JOB = (update(JobModel).where(JobModel.id == bindparam("row_id"))
               .values(attempts=bindparam("new_attempts"), lock_owner=None, lock_until=None,
                       **{column: bindparam(f"new_{column}") for column in _RECORDED_JOB_COLUMNS}))
_RECORD_RUN = (update(RunModel).where(RunModel.id == bindparam("row_id"))
               .values(**{column: bindparam(f"new_{column}") for column in _RECORDED_RUN_COLUMNS}))


def _launched_offer(offers: list[Offer], attempts: list[ProvisioningAttempt]) -> Offer:
    last = attempts[-1]
    return next(o for o in offers if (o.backend, o.region, o.instance_type, o.spot) == (
        last.backend, last.region, last.instance_type, last.spot))


def _with_attempts(recorded: str, attempts: list[ProvisioningAttempt]) -> str:
    return json.dumps(json.loads(recorded) + [a.model_dump(mode="json") for a in attempts])


def _warnings_change(backends: list[BackendModel], attempts: list[ProvisioningAttempt], broken: set[str]) -> bool:
    """Whether `_record_backend_warnings` has anything to write, judged by the backends as loaded with
    the job (most launches succeed on a backend without a warning: no statement for them)."""
    warned = {b.type for b in backends if b.warning}
    return any((a.ok and a.backend in warned) or (not a.ok and a.backend in broken) for a in attempts)


async def _record_backend_warnings(session: AsyncSession, *, project_id: str, attempts: list[ProvisioningAttempt],
                                   broken: set[str]) -> None:
    """A backend that could not launch anything gets the reason as its warning; one that launched
    loses its warning."""
    backends = {b.type: b for b in await session.scalars(
        select(BackendModel).where(BackendModel.project_id == project_id))}
    for attempt in attempts:
        backend = backends.get(attempt.backend)
        if backend is None:
            continue
        if attempt.ok:
            backend.warning = backend.warning_at = None
        elif attempt.backend in broken and attempt.reason:
            backend.warning, backend.warning_at = attempt.reason, utcnow()


async def _fail(ctx: ServerContext, job_id: str, reason: str) -> None:
    await _end(ctx, job_id, JobStatus.FAILED, reason=reason)


async def _end(ctx: ServerContext, job_id: str, status: JobStatus, *, reason: str | None = None) -> None:
    """The job ends before any launch: failed, or stopped (for the reason its run or it was stopped)."""
    async with ctx.db.session() as session:
        job = await load_job(session, job_id)
        run = job.run
        if status == JobStatus.STOPPED:
            reason = run.stop_reason if run.stop_requested else job.stop_reason
        set_job_status(job, run, status, reason=reason)
        await session.commit()


async def _wait(ctx: ServerContext, job_id: str, reason: str) -> None:
    """Back to submitted, saying what for, and tried again in a few seconds."""
    async with ctx.db.session() as session:
        job = await load_job(session, job_id)
        set_job_status(job, job.run, JobStatus.SUBMITTED, reason=reason)
        job.lock_owner, job.lock_until = None, utcnow() + VOLUME_WAIT_DELAY
        await session.commit()


async def _no_capacity(ctx: ServerContext, job_id: str, reason: str, run_spec: RunSpec) -> None:
    """No capacity for the job: it waits (under `retry: on_events: [no-capacity]`) or fails. Waiting,
    it is unclaimable for CAPACITY_RETRY_DELAY, or until capacity is freed (see schedule_once)."""
    await release_unlaunched(ctx=ctx, job_id=job_id)
    retry = run_spec.configuration.retry
    async with ctx.db.session() as session:
        job = await load_job(session, job_id)
        run = job.run
        job.status = JobStatus.SUBMITTED.value
        elapsed = (utcnow() - run.submitted_at).total_seconds()
        if retry and "no-capacity" in retry.on_events and (retry.duration is None or elapsed < retry.duration):
            set_job_status(job, run, JobStatus.SUBMITTED, reason=f"{WAITING_FOR_CAPACITY}: {reason}")
            # Keep it unclaimable until the next try.
            job.lock_owner = None
            job.lock_until = utcnow() + CAPACITY_RETRY_DELAY
            await session.commit()
            return
        set_job_status(job, run, JobStatus.FAILED, reason=reason)
        reschedule(session, job, run, latest=True)  # the job being provisioned is its run's latest
        await session.commit()


def _reserved(run_spec: RunSpec) -> dict[str, float]:
    """The CPUs and memory the job asked for as an exact amount (`cpu: 8`, not the default or a range
    such as `4..`): a machine jobs share (local) keeps them for it."""
    resources = run_spec.configuration.resources
    cpu, memory = resources.cpu, resources.memory
    exact_cpu = "cpu" in resources.model_fields_set and cpu.min is not None and cpu.min == cpu.max
    exact_memory = "memory" in resources.model_fields_set and memory.min is not None and memory.min == memory.max
    return {"reserved_cpus": cpu.min if exact_cpu else 0, "reserved_memory_gb": memory.min if exact_memory else 0}


def _gpu_count(run_spec: RunSpec) -> int:
    gpu = run_spec.configuration.resources.gpu
    return (gpu.count.min or 0) if gpu and gpu.count.max != 0 else 0


def _attempt(offer: Offer, *, ok: bool, reason: str | None = None) -> ProvisioningAttempt:
    return ProvisioningAttempt(at=utcnow(), backend=offer.backend, region=offer.region,
                               instance_type=offer.instance_type, price=offer.price, spot=offer.spot, ok=ok,
                               reason=reason)
