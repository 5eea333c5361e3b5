"""Follows launched jobs: status and heartbeats from the bucket, stop requests, timeouts,
instance teardown, and resubmission under the run's retry policy."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, or_, select, update

from dstack.backends.base import InstanceCheck, LaunchedInstance, LaunchIntent
from dstack.core.fleets import InstanceStatus
from dstack.core.profiles import duration_text
from dstack.core.runs import FINISHED_STATUSES, JobStatus, RunSpec
from dstack.server.context import ServerContext
from dstack.server.failpoints import failpoint
from dstack.server.models import InstanceModel, JobModel, ProjectModel, RunModel, utcnow
from dstack.server.services.backends import compute_for
from dstack.server.services.job_specs import stop_grace
from dstack.server.services.multinode import settle_multinode_runs
from dstack.server.services.run_status import is_service, set_job_status
from dstack.server.services.runs import (
    add_agent_events,
    new_job,
    reschedule,
)
from dstack.server.services.service_runs import settle_service_runs
from dstack.server.workers.common import (
    for_each,
    for_each_leased_batch,
    load_job,
    load_jobs,
    wake_waiting_elsewhere,
)
from dstack.server.workers.fleet_jobs import release_fleet_instance

logger = logging.getLogger("dstack.server.reconciler")
_AGENT_FINAL = ("done", "failed", "stopped")
_FOLLOWED = [JobStatus.PROVISIONING.value, JobStatus.RUNNING.value, JobStatus.TERMINATING.value]
# After a stop request, how long past the grace period we wait for the agent before tearing down.
STOP_TIMEOUT_MARGIN = 15.0
INTERRUPTED = "provisioning was interrupted"
MAX_INTERRUPTIONS = 3


@dataclass
class AgentState:
    status: dict[str, Any] | None
    heartbeat: dict[str, Any] | None
    metrics: dict[str, Any] | None = None  # read only for runs with a utilization_policy


async def reconcile_once(ctx: ServerContext) -> None:
    async with ctx.db.session() as session:
        ids = list(await session.scalars(
            select(JobModel.id).where(or_(JobModel.status.in_(_FOLLOWED), JobModel.instance_terminated.is_(False)))
        ))
    await for_each_leased_batch(ctx, ids, lambda batch: _reconcile_batch(ctx, batch))
    await settle_multinode_runs(ctx)
    await settle_service_runs(ctx)
    if time.monotonic() - ctx.last_reap >= ctx.settings.reaper_interval:
        ctx.last_reap = time.monotonic()
        await _reap(ctx)


async def _reap(ctx: ServerContext) -> None:
    """Terminate cloud instances of this server's backends that no live job or fleet owns."""
    async with ctx.db.session() as session:
        live = set(await session.scalars(
            select(JobModel.instance_id).where(JobModel.instance_terminated.is_(False),
                                               JobModel.instance_id.is_not(None))))
        live |= set(await session.scalars(  # fleet instances, idle ones included
            select(InstanceModel.instance_id).where(InstanceModel.status != InstanceStatus.TERMINATED.value,
                                                    InstanceModel.instance_id.is_not(None))))
        # Claimed jobs whose launch is not recorded yet (the launch call may be under way; a claim
        # that ran out is resolved by `_resolve_interrupted`, which adopts what the launch made).
        launching = frozenset(await session.scalars(
            select(JobModel.id).where(JobModel.status == JobStatus.PROVISIONING.value,
                                      JobModel.instance_id.is_(None))))
        projects = list(await session.scalars(select(ProjectModel)))
        await session.commit()
    for project in projects:
        for backend in project.backends:
            if backend.type == "local":
                continue  # local agents are followed through their jobs
            try:
                compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                                      backend_type=backend.type)
                reaped = await asyncio.to_thread(compute.reap, live_instance_ids=live, launching_job_ids=launching)
            except Exception:
                logger.exception("reaping %s instances of project %s failed", backend.type, project.name)
                continue
            for instance_id in reaped:
                logger.warning("terminated orphaned %s instance %s of project %s", backend.type, instance_id,
                               project.name)


async def _reconcile_batch(ctx: ServerContext, job_ids: list[str]) -> None:
    """A step for each job of a batch, under the leases `reconcile_once` took for them: the jobs are
    read in one statement, their agents and instances asked concurrently, and every change written in
    one commit (one UPDATE per table and set of columns) instead of a session for each job."""
    async with ctx.db.session() as session:
        jobs = await load_jobs(session, job_ids)
        await session.commit()  # no transaction stays open across bucket reads
        observed: list[_Observed] = []

        async def observe(job: JobModel) -> None:
            try:
                if JobStatus(job.status) in FINISHED_STATUSES:
                    await _terminate_finished(ctx, job)
                elif job.instance is None:
                    if job.id in ctx.provisioning:
                        return  # this process is launching it: its claim's renewal was late, not lost
                    # Claimed, and the claim ran out: the replica that claimed it died before recording
                    # a launch.
                    await _resolve_interrupted(ctx, job.id)
                else:
                    observed.append(await _observe(ctx, job))
            except Exception:
                logger.exception("reconciling job %s failed", job.id)
                session.expunge(job)  # what this step changed of it is not written

        await for_each(jobs, observe)
        await session.commit()
    finished: list[_Observed] = []
    for step in observed:
        if step.agent_status == "running" and step.was == JobStatus.PROVISIONING:
            failpoint("after-running")
        if JobStatus(step.job.status) in FINISHED_STATUSES:
            finished.append(step)
    if finished:
        failpoint("after-finish")
        await _after_finish(ctx, finished)


async def _terminate_finished(ctx: ServerContext, job: JobModel) -> None:
    """A job that ended and whose instance is not terminated yet (the last try failed; or it was
    stopped before its launch was recorded)."""
    await _terminate(ctx, job)
    async with ctx.db.transaction() as conn:
        await conn.execute(_MARK_TERMINATED, [{"row_id": job.id, "terminated": True}])
        await wake_waiting_elsewhere(ctx, conn)
    ctx.scheduler_wake.set()


@dataclass
class _Observed:
    job: JobModel
    was: JobStatus  # the job's status before this step
    agent_status: str | None
    run_conf: Any


async def _observe(ctx: ServerContext, job: JobModel) -> _Observed:
    """What the job's agent and instance say, applied to the job and its run (in memory: the batch
    commits them); a stop request sent to the agent."""
    settings = ctx.settings
    run = job.run
    status = JobStatus(job.status)
    compute = compute_for(settings=settings, encryptor=ctx.encryptor, project=run.project,
                          backend_type=job.backend)
    storage = compute.storage
    run_conf = RunSpec.model_validate_json(run.spec).configuration
    policy = run_conf.utilization_policy
    inactivity = getattr(run_conf, "inactivity_duration", None)
    state = await asyncio.to_thread(_read_agent_state, storage, job.storage_prefix,
                                    policy is not None or inactivity is not None)
    instance = LaunchedInstance.model_validate_json(job.instance)
    agent_status = (state.status or {}).get("status")
    if agent_status in _AGENT_FINAL or not compute.checks_instances:
        check = InstanceCheck()  # the agent's own final word comes first (below); no cloud call
    else:
        try:
            check = await asyncio.to_thread(compute.check_instance, instance=instance)
        except Exception:
            logger.exception("checking instance %s failed", instance.instance_id)
            check = InstanceCheck()
    if check.failure:
        # The agent may have finished and terminated its instance between the two reads: its
        # final status wins over "the instance is gone".
        state = await asyncio.to_thread(_read_agent_state, storage, job.storage_prefix)
    if check.data is not None:
        job.instance = instance.model_copy(update={"data": check.data}).model_dump_json()
    now = utcnow()
    if state.heartbeat and int(state.heartbeat.get("seq", 0)) != job.heartbeat_seq:
        job.heartbeat_seq = int(state.heartbeat["seq"])
        job.heartbeat_at = now
    agent_status = (state.status or {}).get("status")
    add_agent_events(job, (state.status or {}).get("events") or [])

    if agent_status in _AGENT_FINAL:
        _finish_from_agent(job, run, state.status or {})

    elif check.failure:
        set_job_status(job, run, JobStatus.FAILED, reason=check.failure)
    else:
        if agent_status == "running" and status == JobStatus.PROVISIONING:
            _started_from_agent(job, state.status or {})
            set_job_status(job, run, JobStatus.RUNNING)
        max_duration = run_conf.max_duration
        if (max_duration and job.started_at and not run.stop_requested
                and (now - job.started_at).total_seconds() > max_duration):
            run.stop_requested = True
            run.stop_reason = "max duration exceeded"
        low_usage = utilization_stop_reason(policy, state.metrics) if agent_status == "running" else None
        idle = inactivity_stop_reason(inactivity, state.metrics) if agent_status == "running" else None
        if (low_usage or idle) and not run.stop_requested:
            run.stop_requested = True
            run.stop_reason = low_usage or idle
        stopping = _service_drained(ctx, job, run, now) if run.stop_requested else _replica_stop_due(ctx, job, now)
        if stopping and not job.stop_sent:
            reason = run.stop_reason if run.stop_requested else job.stop_reason
            await asyncio.to_thread(storage.put_json, f"{job.storage_prefix}/stop.json",
                                    {"abort": run.stop_abort, "reason": reason, "t": now.timestamp()})
            job.stop_sent = True
            set_job_status(job, run, JobStatus.TERMINATING, reason=reason)
            if run.stop_abort:
                _finish_stopped(job, run)
        elif job.stop_sent and \
                _seconds_since_stop(job, now) > stop_grace(run_conf) + STOP_TIMEOUT_MARGIN:
            _finish_stopped(job, run)
        elif check.booting and not job.heartbeat_seq:
            booting_for = (now - _launched_at(job, now)).total_seconds()
            if booting_for > compute.BOOT_TIMEOUT:
                set_job_status(job, run, JobStatus.FAILED, reason=(
                    f"the instance did not boot in {compute.BOOT_TIMEOUT / 60:.0f} minutes "
                    f"({job.backend} still reports it booting)"))
            else:
                job.heartbeat_at = now  # the provisioning timeout counts from when it is up
        else:
            silent = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else 0.0
            timeout = settings.heartbeat_timeout if job.heartbeat_seq else settings.provisioning_timeout
            if silent > timeout:
                reason = "instance lost" if job.heartbeat_seq else "the instance did not start in time"
                hint = None if job.heartbeat_seq else compute.start_timeout_hint(instance=instance)
                set_job_status(job, run, JobStatus.FAILED, reason=f"{reason}: {hint}" if hint else reason)

    if JobStatus(job.status) in FINISHED_STATUSES:
        _stop_other_nodes(job, run, run_conf)
    return _Observed(job=job, was=status, agent_status=agent_status, run_conf=run_conf)


async def _after_finish(ctx: ServerContext, steps: list[_Observed]) -> None:
    """The jobs that ended in this batch: their instances terminated, then a retry or the schedule's
    next job where one may follow, and the rest marked terminated in one statement."""
    terminated: dict[str, bool] = {}

    async def terminate(step: _Observed) -> None:
        try:
            await _terminate(ctx, step.job)
            terminated[step.job.id] = True
        except Exception:  # tried again on the next pass (the job stays not-terminated)
            logger.warning("terminating the instance of job %s failed; trying again", step.job.id, exc_info=True)
            terminated[step.job.id] = False

    await for_each(steps, terminate)
    plain = []
    for step in steps:
        job_id, run_conf = step.job.id, step.run_conf
        if (step.job.status == JobStatus.FAILED.value and run_conf.retry is not None) or \
                getattr(run_conf, "schedule", None) is not None:
            # A retry or the schedule's next job may follow: decided on the job and run as they are now.
            async with ctx.db.session() as session:
                job = await load_job(session, job_id)
                job.instance_terminated = terminated[job_id]
                if not _maybe_retry(session, job, job.run):
                    reschedule(session, job, job.run)
                if terminated[job_id]:
                    await wake_waiting_elsewhere(ctx, session)
                await session.commit()
        else:  # nothing follows (most jobs): plain statements, not a reload of the job and its run
            plain.append({"row_id": job_id, "terminated": terminated[job_id]})
    if plain:
        async with ctx.db.transaction() as conn:
            await conn.execute(_MARK_TERMINATED, plain)
            if any(p["terminated"] for p in plain):
                await wake_waiting_elsewhere(ctx, conn)
    ctx.scheduler_wake.set()


# Built once: it runs for every job that ends. A job that ended and whose instance is gone frees
# capacity: the jobs waiting for some are tried now, by priority (see `wake_waiting_elsewhere`).
_MARK_TERMINATED = (update(JobModel).where(JobModel.id == bindparam("row_id"))
                    .values(instance_terminated=bindparam("terminated")))


async def _resolve_interrupted(ctx: ServerContext, job_id: str) -> None:
    """A claim whose replica died: adopt what it launched (found by the job id the launch tagged it
    with), or put the job back in the queue when nothing was launched. A stop request is honoured."""
    async with ctx.db.session() as session:
        job = await load_job(session, job_id)
        intent = LaunchIntent.model_validate_json(job.launch_intent) if job.launch_intent else None
        project = job.run.project
        await session.commit()
    found, extras = None, {}
    if intent is not None:
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                              backend_type=intent.offer.backend)
        found = await asyncio.to_thread(compute.find_launched, intent=intent)
        if found is not None:
            extras = await asyncio.to_thread(_spec_extras, compute, intent.job_prefix)
    async with ctx.db.session() as session:
        job = await load_job(session, job_id)
        run = job.run
        if job.instance is not None or JobStatus(job.status) != JobStatus.PROVISIONING:
            return  # resolved meanwhile
        if found is not None and intent is not None:
            logger.warning("adopting instance %s of job %s, launched by a replica that died before recording it",
                           found.instance_id, job_id)
            job.backend = intent.offer.backend
            job.offer = intent.offer.model_dump_json()
            job.price = intent.offer.price
            job.instance_id = found.instance_id
            job.instance = found.model_copy(update={"data": {**found.data, "spec_extras": extras}}).model_dump_json()
            job.instance_terminated = False
            job.heartbeat_at = utcnow()
        elif run.stop_requested:
            set_job_status(job, run, JobStatus.STOPPED, reason=run.stop_reason)
        else:
            interrupted = sum(1 for e in json.loads(job.history) if e.get("reason") == INTERRUPTED)
            if interrupted >= MAX_INTERRUPTIONS:
                set_job_status(job, run, JobStatus.FAILED, reason=f"{INTERRUPTED} {interrupted + 1} times")
            else:
                set_job_status(job, run, JobStatus.SUBMITTED, reason=INTERRUPTED)
                job.lock_owner, job.lock_until = None, None
        await session.commit()
    ctx.scheduler_wake.set()


def _spec_extras(compute: Any, prefix: str) -> dict[str, Any]:
    """The backend's entries of the job spec (where its logs go), as staged before the launch."""
    spec = compute.storage.get_json(f"{prefix}/spec.json") or {}
    keys = ("logs", "runner_logs", "terminate", "secrets_source", "sandbox")
    return {k: spec[k] for k in keys if k in spec}


def _read_agent_state(storage: Any, prefix: str, metrics: bool = False) -> AgentState:
    return AgentState(status=storage.get_json(f"{prefix}/status.json"),
                      heartbeat=storage.get_json(f"{prefix}/heartbeat.json"),
                      metrics=storage.get_json(f"{prefix}/metrics.json") if metrics else None)


def inactivity_stop_reason(inactivity: int | None, metrics: dict[str, Any] | None) -> str | None:
    """A dev environment nobody has been connected to over SSH for `inactivity_duration`."""
    idle_for = (metrics or {}).get("ssh_inactive_for")
    if inactivity is None or idle_for is None or float(idle_for) < inactivity:
        return None
    return f"inactive for {duration_text(inactivity)} (no SSH connection)"


def utilization_stop_reason(policy: Any, metrics: dict[str, Any] | None) -> str | None:
    """Why the run must stop under its `utilization_policy`: some GPU has stayed under the floor for a
    whole time window (measured by the agent's samples)."""
    low_for = (metrics or {}).get("gpu_low_for")
    if policy is None or low_for is None or float(low_for) < policy.time_window:
        return None
    return (f"utilization policy: a GPU stayed under {policy.min_gpu_utilization}% for "
            f"{duration_text(policy.time_window)}")


def _launched_at(job: JobModel, now: datetime) -> datetime:
    """When the job's instance was launched: its latest move to provisioning."""
    for event in reversed(json.loads(job.history)):
        if event["status"] == JobStatus.PROVISIONING.value and not event.get("reason"):
            return datetime.fromisoformat(event["at"])
    return now


def _seconds_since_stop(job: JobModel, now: datetime) -> float:
    for event in reversed(json.loads(job.history)):
        if event["status"] == JobStatus.TERMINATING.value:
            return (now - datetime.fromisoformat(event["at"])).total_seconds()
    return 0.0


def _finish_from_agent(job: JobModel, run: RunModel, status: dict[str, Any]) -> None:
    agent_status = status["status"]
    exit_code = status.get("exit_code")
    if isinstance(status.get("log_events"), int):
        job.log_events = status["log_events"]
    _started_from_agent(job, status)  # a short job can end between two passes
    if agent_status == "done":
        set_job_status(job, run, JobStatus.DONE, exit_code=0)
    elif agent_status == "failed":
        set_job_status(job, run, JobStatus.FAILED, reason=status.get("reason"), exit_code=exit_code)
    else:
        _finish_stopped(job, run)
    # It ended when its agent wrote so, not when this pass read it (DURATION counts the job's real run).
    ended = _agent_time(status.get("t"))
    if ended is not None and job.started_at is not None and job.finished_at is not None:
        job.finished_at = run.finished_at = min(max(ended, job.started_at), job.finished_at)


def _agent_time(value: object) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) and value > 0 else None


def _started_from_agent(job: JobModel, status: dict[str, Any]) -> None:
    """The job ran from when its agent started its process, not from when the server noticed."""
    started = _agent_time(status.get("started_at"))
    if job.started_at is None and started is not None:
        job.started_at = min(started, utcnow())


def _stop_other_nodes(job: JobModel, run: RunModel, conf: Any) -> None:
    """A multi-node task ends together: a failed node stops the others; with `stop_criteria:
    master-done`, so does the master's success (`conf`: the run's configuration, as parsed)."""
    if getattr(conf, "nodes", 1) <= 1 or run.stop_requested:
        return
    if job.status == JobStatus.FAILED.value:
        run.stop_requested, run.stop_reason = True, f"node {job.job_num} failed"
    elif job.job_num == 0 and job.status == JobStatus.DONE.value and conf.stop_criteria == "master-done":
        run.stop_requested, run.stop_reason = True, "the master node is done (stop_criteria: master-done)"


def _replica_stop_due(ctx: ServerContext, job: JobModel, now: datetime) -> bool:
    """A service replica scaled down or replaced: stopped once drained (the proxy sends it nothing new
    from the moment it was retired; what it is still answering may finish, for a while)."""
    if job.stop_reason is None:
        return False
    if job.stop_after is not None and now < job.stop_after:
        return False
    overdue = job.stop_after is None or (now - job.stop_after).total_seconds() > DRAIN_TIMEOUT
    return overdue or ctx.proxy.in_flight(job.id) == 0


def _service_drained(ctx: ServerContext, job: JobModel, run: RunModel, now: datetime) -> bool:
    """A stopped run's job may be stopped now: at once, unless it is a service's replica still
    answering requests through this server's proxy (`dstack stop` drains: no new request goes to it,
    those in flight finish, for up to DRAIN_TIMEOUT; `--abort` does not wait)."""
    if run.stop_abort or not is_service(run):
        return True
    ctx.proxy.drain(job.id)
    if job.stop_after is None:
        job.stop_after = now  # when the drain began (committed with the job)
    overdue = (now - job.stop_after).total_seconds() > DRAIN_TIMEOUT
    return overdue or ctx.proxy.in_flight(job.id) == 0


# How long a retired replica's in-flight requests may go on before it is stopped anyway.
DRAIN_TIMEOUT = 120.0


def _finish_stopped(job: JobModel, run: RunModel) -> None:
    reason = (run.stop_reason if run.stop_requested else job.stop_reason) or run.stop_reason or "stopped"
    final = JobStatus.TERMINATED if reason == "max duration exceeded" else JobStatus.STOPPED
    set_job_status(job, run, final, reason=reason)


async def _terminate(ctx: ServerContext, job: JobModel) -> None:
    if job.instance is None or job.instance_terminated or job.backend is None:
        return
    # Counted before (a scheduler may see the capacity free while the call is still on its way back)
    # and after (for one that looked in between): see scheduler._outranked.
    ctx.capacity_freed += 1
    try:
        if job.fleet_instance_id is not None:  # not the job's to end: its fleet keeps it
            await release_fleet_instance(ctx, instance_id=job.fleet_instance_id, job_id=job.id,
                                         reason=job.reason)
            return
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=job.run.project,
                              backend_type=job.backend)
        instance = LaunchedInstance.model_validate_json(job.instance)
        await asyncio.to_thread(compute.terminate, instance=instance)
    finally:
        ctx.capacity_freed += 1


def _maybe_retry(session: Any, job: JobModel, run: RunModel) -> bool:
    """Resubmit a failed job when the run's retry policy covers what happened."""
    if job.status != JobStatus.FAILED.value or run.stop_requested or run.jobs[-1].id != job.id:
        return False
    conf = RunSpec.model_validate_json(run.spec).configuration
    if getattr(conf, "nodes", 1) > 1 or conf.type == "service":
        # Every node together, once all are gone (services/multinode.py); a service's replica is
        # replaced by the next pass (services/service_runs.py).
        return False
    retry = conf.retry
    if retry is None:
        return False
    reason = job.reason or ""
    event = "interruption" if reason == "instance lost" or reason.startswith("interrupted") else "error"
    elapsed = (utcnow() - run.submitted_at).total_seconds()
    if event not in retry.on_events or (retry.duration is not None and elapsed > retry.duration):
        return False
    now = utcnow()
    resubmitted = new_job(run=run, project=run.project.name, submission=job.submission + 1, now=now)
    session.add(resubmitted)
    run.status = JobStatus.SUBMITTED.value
    run.reason = f"resubmitted after {event}: {job.reason}"
    run.finished_at = None
    return True
