"""How a job's status moves, and how its run's follows from its jobs: a run of one job mirrors it, a
multi-node task aggregates its nodes, a service its replicas."""

from __future__ import annotations

import json
from datetime import datetime

from dstack.core.runs import FINISHED_STATUSES, JobStatus, StatusEvent
from dstack.server.models import JobModel, RunModel, utcnow


def set_job_status(
    job: JobModel, run: RunModel, status: JobStatus, *, reason: str | None = None, exit_code: int | None = None
) -> None:
    """Move a job (and its run, which mirrors its latest job) to `status`, recording the event."""
    now = utcnow()
    history = json.loads(job.history)
    last = history[-1] if history else {}
    job.status = status.value
    job.reason = reason
    if exit_code is not None:
        job.exit_code = exit_code
    if status == JobStatus.RUNNING and job.started_at is None:
        job.started_at = now
    if status in FINISHED_STATUSES:
        job.finished_at = now
    if (last.get("status"), last.get("reason")) != (status.value, reason):
        history.append(StatusEvent(at=now, status=status, reason=reason).model_dump(mode="json"))
        job.history = json.dumps(history)
    if node_count(run) > 1:
        aggregate_nodes(job, run, now)
        return
    if is_service(run):
        aggregate_replicas(run, now, changed=job)
        return
    run.status = status.value
    run.reason = reason
    run.exit_code = job.exit_code
    run.finished_at = now if status in FINISHED_STATUSES else None


# A run's spec is stored as `RunSpec.model_dump_json()`: a service's holds this (its configuration's
# type; JSON inside a string value would be escaped), and SQL finds services with SERVICE_SPEC_LIKE.
SERVICE_SPEC_MARK = '"type":"service"'
SERVICE_SPEC_LIKE = f"%{SERVICE_SPEC_MARK}%"


def is_service(run: RunModel) -> bool:
    return SERVICE_SPEC_MARK in run.spec and json.loads(run.spec).get("configuration", {}).get("type") == "service"


def aggregate_replicas(run: RunModel, now: datetime, *, changed: JobModel | None = None,
                       scaled_to_zero: bool = False) -> None:
    """A service's status from its replicas: running while one runs; a replica that ended on its own
    leaves it running (the next reconcile pass replaces it); finished only once stopped and every
    replica is gone (failed if it was stopped because a replica kept failing)."""
    jobs = {j.id: j for j in run.jobs}
    if changed is not None:
        jobs[changed.id] = changed
    live = [j for j in jobs.values() if JobStatus(j.status) not in FINISHED_STATUSES]
    statuses = {JobStatus(j.status) for j in live}
    reason: str | None = None
    if run.stop_requested:
        if live:
            status, reason = JobStatus.TERMINATING, run.stop_reason
        else:
            why = run.stop_reason or "stopped"
            status = JobStatus.FAILED if why.startswith(CRASH_LOOP) else \
                JobStatus.TERMINATED if why == "max duration exceeded" else JobStatus.STOPPED
            reason = why
    elif JobStatus.RUNNING in statuses or statuses == {JobStatus.TERMINATING} or (not live and scaled_to_zero):
        status, reason = JobStatus.RUNNING, None if live else "scaled to zero"
    elif JobStatus.PROVISIONING in statuses:
        status = JobStatus.PROVISIONING
    elif live:
        status, reason = JobStatus.SUBMITTED, next((j.reason for j in live if j.reason), None)
    else:
        return  # between a replica's end and its replacement: the settle pass decides
    run.status = status.value
    run.reason = reason
    run.exit_code = None
    run.finished_at = now if status in FINISHED_STATUSES else None


# The start of a service's stop reason when a replica kept failing (the run ends failed).
CRASH_LOOP = "replica "


def node_count(run: RunModel) -> int:
    try:
        return int(json.loads(run.spec).get("configuration", {}).get("nodes") or 1)
    except (ValueError, TypeError):
        return 1


def aggregate_nodes(changed: JobModel, run: RunModel, now: datetime) -> None:
    """A multi-node run's status from its nodes (the latest submission's jobs): failed as soon as one
    fails; done when the master is done and none failed; running once every node runs."""
    nodes = {j.job_num: j for j in run.jobs if j.submission == changed.submission}
    nodes[changed.job_num] = changed
    statuses = {n: JobStatus(j.status) for n, j in nodes.items()}
    failed = next((j for j in nodes.values() if JobStatus(j.status) == JobStatus.FAILED), None)
    master = nodes.get(0, changed)
    if failed is not None:
        status, reason = JobStatus.FAILED, f"node {failed.job_num}: {failed.reason}" if failed.reason else None
    elif all(st in FINISHED_STATUSES for st in statuses.values()):
        status, reason = JobStatus(master.status), master.reason
    elif any(st == JobStatus.TERMINATING for st in statuses.values()):
        status, reason = JobStatus.TERMINATING, next(j.reason for j in nodes.values() if j.status == "terminating")
    elif all(st in (JobStatus.RUNNING, *FINISHED_STATUSES) for st in statuses.values()):
        status, reason = JobStatus.RUNNING, None
    elif any(st in (JobStatus.PROVISIONING, JobStatus.RUNNING) for st in statuses.values()):
        status, reason = JobStatus.PROVISIONING, None
    else:
        status, reason = JobStatus.SUBMITTED, master.reason
    run.status = status.value
    run.reason = reason
    run.exit_code = failed.exit_code if failed is not None else master.exit_code
    run.finished_at = now if all(st in FINISHED_STATUSES for st in statuses.values()) else None
