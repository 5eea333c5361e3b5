"""Plan, submit, list, get and stop runs."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.backends.base import requirements_for
from dstack.core.configurations import not_supported_yet
from dstack.core.errors import ConfigurationError, InvalidStateError, NoOffersError, ResourceNotFoundError
from dstack.core.runs import (
    FINISHED_STATUSES,
    Job,
    JobStatus,
    Offer,
    ProvisioningAttempt,
    Run,
    RunPlan,
    RunSpec,
    StatusEvent,
)
from dstack.server.context import ServerContext
from dstack.server.failpoints import failpoint
from dstack.server.models import JobModel, ProjectModel, RunModel, UserModel, new_id, utcnow
from dstack.server.services import fleets as fleets_svc
from dstack.server.services.offers import OfferSearch, find_offers, multinode_backends
from dstack.server.services.repos import check_repo, code_exists
from dstack.server.services.run_status import is_service, set_job_status
from dstack.server.services.volumes import resolve_run_volumes
from dstack.storage.layout import job_prefix

ACTIVE_STATUSES = [s.value for s in JobStatus if s not in FINISHED_STATUSES]
_ADJECTIVES = ["brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucky", "mighty",
               "nice", "proud", "quick", "silly", "swift", "tidy", "witty", "zesty", "bold", "bright"]
_NOUNS = ["otter", "falcon", "panda", "tiger", "koala", "lynx", "heron", "bison", "whale", "gecko",
          "cobra", "moose", "raven", "shark", "yak", "zebra", "wolf", "crane", "eagle", "fox"]


def backend_types_for(project: ProjectModel, run_spec: RunSpec) -> list[str]:
    """The project's backends that the run's `backends` allows (all when it names none). A backend
    the project lacks is not an error of the configuration: the plan finds no offers there and says
    so (see `missing_backends`)."""
    types = [b.type for b in project.backends]
    wanted = run_spec.configuration.backends
    types = [t for t in types if t in wanted] if wanted else types
    if shared_network_clash(run_spec.configuration):
        types = [t for t in types if t != "local"]
    return types


def shared_network_clash(conf: Any) -> bool:
    """Replicas of a service without `image` on the local backend would all listen on this machine's
    one network, on the same port: only one could run."""
    return conf.type == "service" and not conf.image and (conf.replicas.max or 0) > 1


def missing_backends(project: ProjectModel, run_spec: RunSpec) -> str | None:
    wanted = run_spec.configuration.backends or []
    types = [b.type for b in project.backends]
    unknown = [b for b in wanted if b not in types]
    if not unknown:
        return None
    return f"project {project.name!r} has no {', '.join(unknown)} backend (it has {', '.join(types) or 'none'})"


def check_supported(run_spec: RunSpec) -> None:
    """Fields parsed as upstream documents them whose runtime this server does not have yet."""
    reasons = not_supported_yet(run_spec.configuration)
    if reasons:
        raise ConfigurationError(f"not supported yet: {'; '.join(text for _, text in reasons)}",
                                 field=f"configuration.{reasons[0][0]}",
                                 fix="Remove it from the configuration (see docs/configuration.md, "
                                     "\"Not supported yet\")")


async def get_plan(*, ctx: ServerContext, project: ProjectModel, user: UserModel, run_spec: RunSpec) -> RunPlan:
    """The offers for a run. It reads through short sessions of its own (and may ask clouds), so a caller
    holds no pooled connection meanwhile: one per waiting caller could take the whole pool."""
    check_supported(run_spec)
    conf = run_spec.configuration
    requirements = requirements_for(conf, admin=user.global_role == "admin")
    backend_types = backend_types_for(project, run_spec)
    volumes = await resolve_run_volumes(ctx=ctx, project=project, conf=conf)
    if volumes is not None:  # only where its network volumes are, on an instance of its own
        requirements, backend_types = volumes.narrow(requirements), [volumes.backend]
    # Idle fleet instances that fit come first (the scheduler takes one before launching anything).
    idle = [] if volumes else await fleets_svc.idle_offers(
        ctx=ctx, project=project, requirements=requirements,
        backend_types=fleets_svc.fleet_backend_types(backend_types, conf.backends), fleets=conf.fleets)
    nodes = getattr(conf, "nodes", 1)
    if nodes > 1:  # the hosts of one SSH fleet, else N cloud instances of one offer (workers/nodes.py)
        idle = await fleets_svc.idle_offers(ctx=ctx, project=project, requirements=requirements,
                                            backend_types=["ssh", *backend_types], fleets=conf.fleets,
                                            multinode=True)
        if len(idle) >= nodes:
            search = OfferSearch(offers=idle)
        elif conf.fleets or conf.creation_policy == "reuse":
            raise NoOffersError(f"nodes: {nodes} needs {nodes} idle instances of one SSH or cluster fleet that fit "
                                f"the run (there are {len(idle)}), and the run may not launch instances",
                                fix="Apply an SSH fleet with enough hosts, wait for its hosts to be idle, or drop "
                                    "`fleets`/`creation_policy`")
        else:
            cloud, reasons = multinode_backends(ctx, project, backend_types)
            search = await find_offers(ctx=ctx, project=project, backend_types=cloud, requirements=requirements)
            search.rejections[:0] = reasons
            if not cloud:
                raise NoOffersError(f"nodes: {nodes} needs {nodes} idle hosts of one SSH fleet (there are "
                                    f"{len(idle)}) or a backend that launches multi-node tasks (AWS): "
                                    f"{'; '.join(reasons) or 'the project has none'}",
                                    fix="Apply an SSH fleet with enough hosts, or add an AWS backend")
    elif conf.creation_policy == "reuse" or conf.fleets:
        if not idle:
            named = ", ".join(conf.fleets or []) or "the project's fleets"
            raise NoOffersError(f"no idle instance of {named} fits the run (it may not create one: "
                                f"{'fleets' if conf.fleets else 'creation_policy: reuse'})",
                                fix="See `dstack fleet`; wait for an instance to be idle, or drop "
                                    f"`{'fleets' if conf.fleets else 'creation_policy'}`")
        search = OfferSearch(offers=idle)
    else:
        search = await find_offers(ctx=ctx, project=project, backend_types=backend_types, requirements=requirements)
        search.offers[:0] = idle
    missing = missing_backends(project, run_spec)
    if missing:
        search.rejections.insert(0, f"backends: {missing}")
    if shared_network_clash(conf) and any(b.type == "local" for b in project.backends):
        search.rejections.insert(0, "local: replicas without an `image` would share this machine's network "
                                    "and port: give the service an `image` (each container has its own "
                                    "address), or `replicas: 1`")
    if not search.offers:
        raise search.no_offers_error(requirements)
    return RunPlan(run_spec=run_spec, offers=search.offers[:50], total_offers=len(search.offers),
                   max_price=max((o.price for o in search.offers), default=None),
                   project=project.name, user=user.name)


async def submit_run(
    *, session: AsyncSession, ctx: ServerContext, project: ProjectModel, user: UserModel, run_spec: RunSpec
) -> Run:
    conf = run_spec.configuration
    check_supported(run_spec)
    missing_env = [k for k, v in conf.env.items() if v is None]
    if missing_env:
        raise ConfigurationError(
            f"env: {', '.join(missing_env)} has no value", field="env",
            fix="Set it in your shell before `dstack apply`, or give it a value in the configuration",
        )
    await check_repo(session=session, project=project, repo_id=run_spec.repo_id)
    for field_name in ("code_hash", "files_hash"):
        archive = getattr(run_spec, field_name)
        if archive and not await code_exists(session=session, project=project, code_hash=archive):
            raise ConfigurationError(f"the {'code' if field_name == 'code_hash' else 'files'} archive was not "
                                     "uploaded", field=field_name,
                                     fix="Upload it with PUT /api/projects/{project}/code/{sha256} first")
    # Fail fast with a clear message rather than queue a run nothing can ever serve.
    retry = conf.retry
    if not (retry and "no-capacity" in retry.on_events):
        await session.commit()  # nothing written yet: get_plan's own sessions must not wait on ours (see deps)
        await get_plan(ctx=ctx, project=project, user=user, run_spec=run_spec)
    name = run_spec.run_name or conf.name or await _unique_name(session, project)
    # Mostly there is none: asked as a plain, prebuilt statement first (the model only if there is).
    active = None
    if (await session.execute(_ACTIVE_RUN, {"project_id": project.id, "name": name})).first() is not None:
        active = await session.scalar(
            select(RunModel).where(RunModel.project_id == project.id, RunModel.name == name,
                                   RunModel.status.in_(ACTIVE_STATUSES))
        )
    if active is not None and conf.type == "service" and is_service(active) and not active.stop_requested:
        return await _redeploy(session=session, ctx=ctx, run=active, run_spec=run_spec, name=name)
    if active is not None:
        raise InvalidStateError(f"run {name!r} is still active", field="name",
                                fix=f"Stop it with `dstack stop {name}` or choose another name")
    run_spec = run_spec.model_copy(update={"run_name": name})
    now = utcnow()
    run = RunModel(id=new_id(), project_id=project.id, user_id=user.id, name=name,
                   status=JobStatus.SUBMITTED.value, spec=run_spec.model_dump_json(), submitted_at=now)
    session.add(run)
    not_before = conf.schedule.next_fire(now) if conf.schedule else None
    if not_before is not None:
        run.reason = scheduled_reason(not_before)
    # One job per node (multi-node tasks), or per replica (a service starts with its minimum).
    count = conf.replicas.min if conf.type == "service" else getattr(conf, "nodes", 1)
    jobs = [new_job(run=run, project=project.name, submission=0, now=now, not_before=not_before, job_num=job_num,
                    priority=conf.priority) for job_num in range(count or 0)]
    session.add_all(jobs)
    try:
        await session.commit()
    except IntegrityError:  # a parallel submit of the same name won (the DB allows one active run)
        await session.rollback()
        raise InvalidStateError(f"run {name!r} is still active", field="name",
                                fix=f"Stop it with `dstack stop {name}` or choose another name") from None
    failpoint("after-submit")
    ctx.scheduler_wake.set()
    # What was just written, as written (reading it back would cost three statements).
    return Run(id=run.id, name=name, project=project.name, user=user.name, status=JobStatus.SUBMITTED,
               reason=run.reason, exit_code=None, submitted_at=now, finished_at=None, spec=run_spec,
               stop_requested=False, jobs=[job_to_model(j) for j in jobs], deployment=0)


_ACTIVE_RUN = select(RunModel.id).where(RunModel.project_id == bindparam("project_id"),
                                        RunModel.name == bindparam("name"), RunModel.status.in_(ACTIVE_STATUSES))


async def _redeploy(*, session: AsyncSession, ctx: ServerContext, run: RunModel, run_spec: RunSpec,
                    name: str) -> Run:
    """Re-applying a service changes it in place: a new deployment, to which the reconciler rolls the
    replicas over one by one (a new replica first; an old one drained once the new one is ready)."""
    run_spec = run_spec.model_copy(update={"run_name": name})
    if RunSpec.model_validate_json(run.spec).model_dump(exclude={"configuration_text"}) == \
            run_spec.model_dump(exclude={"configuration_text"}):
        return run_to_model(run)  # nothing changed
    won = await session.execute(
        update(RunModel).where(RunModel.id == run.id, RunModel.deployment == run.deployment,
                               RunModel.stop_requested.is_(False))
        .values(spec=run_spec.model_dump_json(), deployment=run.deployment + 1)
        .execution_options(synchronize_session=False))
    if won.rowcount != 1:
        await session.rollback()
        raise InvalidStateError(f"service {name!r} changed meanwhile (another apply, or a stop)",
                                fix="Check it with `dstack ps` and apply again")
    await session.commit()
    await session.refresh(run)  # the UPDATE went around the loaded object
    ctx.reconciler_wake.set()
    return run_to_model(run)


def new_job(*, run: RunModel, project: str, submission: int, now: datetime,
            not_before: datetime | None = None, job_num: int = 0, deployment: int = 0,
            priority: int | None = None) -> JobModel:
    """`priority`: the run's, if the caller has its spec parsed (else read from the stored spec)."""
    job_id = new_id()
    if priority is None:
        priority = RunSpec.model_validate_json(run.spec).configuration.priority
    reason = scheduled_reason(not_before) if not_before else None
    return JobModel(
        id=job_id, run_id=run.id, name=f"{run.name}-{job_num}-{submission}", submission=submission, job_num=job_num,
        deployment=deployment,
        status=JobStatus.SUBMITTED.value, submitted_at=now, instance_terminated=True,
        storage_prefix=job_prefix(project, run.id, job_id), priority=priority, not_before=not_before,
        reason=reason,
        history=json.dumps([StatusEvent(at=now, status=JobStatus.SUBMITTED, reason=reason).model_dump(mode="json")]),
    )


WAITING_FOR_CAPACITY = "waiting for capacity"


def scheduled_reason(at: datetime) -> str:
    return f"scheduled: starts at {at:%Y-%m-%d %H:%M} UTC"


def reschedule(session: AsyncSession, job: JobModel, run: RunModel, *, latest: bool = False) -> bool:
    """After a scheduled run's job ends (and no retry took over): the next one, at the next cron time.
    A stop request ends the schedule. `latest`: the caller knows `job` is the run's latest (its jobs
    need not be loaded)."""
    schedule = RunSpec.model_validate_json(run.spec).configuration.schedule
    if schedule is None or JobStatus(job.status) not in FINISHED_STATUSES or run.stop_requested:
        return False
    if not latest and run.jobs[-1].id != job.id:
        return False
    now = utcnow()
    at = schedule.next_fire(now)
    session.add(new_job(run=run, project=run.project.name, submission=job.submission + 1, now=now, not_before=at))
    run.status = JobStatus.SUBMITTED.value
    run.reason = scheduled_reason(at)
    run.finished_at = None
    return True


async def _unique_name(session: AsyncSession, project: ProjectModel) -> str:
    while True:
        base = f"{random.choice(_ADJECTIVES)}-{random.choice(_NOUNS)}"
        count = await session.scalar(
            select(func.count()).select_from(RunModel).where(
                RunModel.project_id == project.id, RunModel.name.like(f"{base}-%"))
        )
        name = f"{base}-{(count or 0) + 1}"
        if not await session.scalar(select(RunModel.id).where(RunModel.project_id == project.id,
                                                              RunModel.name == name)):
            return name


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_time(value: str | None, *, field: str) -> datetime | None:
    """An RFC 3339 time (with its zone, as the API gives them) from a query; a clear error otherwise."""
    if value is None:
        return None
    try:
        if not _RFC3339.match(value):
            raise ValueError(value)
        # Python reads at most microseconds.
        text = re.sub(r"(\.\d{6})\d+", r"\1", value.upper().replace("Z", "+00:00").replace(" ", "T"))
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(f"{field}: {value!r} is not an RFC 3339 time with its zone", field=field,
                                 fix="Pass a time such as 2026-11-26T20:00:00+00:00") from None
    return parsed


async def get_run_model(*, session: AsyncSession, project: ProjectModel, name: str) -> RunModel:
    run = await session.scalar(
        select(RunModel).where(RunModel.project_id == project.id, RunModel.name == name)
        .order_by(RunModel.submitted_at.desc()).limit(1)
    )
    if run is None:
        raise ResourceNotFoundError(f"run {name!r} does not exist in project {project.name!r}", field="run",
                                    fix="See `dstack ps -a` for the project's runs")
    return run


async def get_run(*, session: AsyncSession, project: ProjectModel, name: str) -> Run:
    return run_to_model(await get_run_model(session=session, project=project, name=name))


async def stop_run(
    *, session: AsyncSession, ctx: ServerContext, project: ProjectModel, name: str, abort: bool
) -> Run:
    run = await get_run_model(session=session, project=project, name=name)
    if JobStatus(run.status) in FINISHED_STATUSES:
        raise InvalidStateError(f"run {name!r} has already finished ({run.status})",
                                fix="Nothing to stop; see `dstack ps -a`")
    run.stop_requested = True
    run.stop_abort = run.stop_abort or abort
    run.stop_reason = run.stop_reason or ("aborted by user" if abort else "stopped by user")
    await session.commit()
    ctx.reconciler_wake.set()
    ctx.scheduler_wake.set()
    return run_to_model(run)


async def attach_info(*, session: AsyncSession, ctx: ServerContext, project: ProjectModel, name: str
                      ) -> dict[str, object]:
    """Where to SSH to reach the run's instance, and the host keys its agent published (to pin)."""
    import asyncio

    from dstack.backends.base import LaunchedInstance
    from dstack.server.services.backends import compute_for

    run = await get_run_model(session=session, project=project, name=name)
    job = master_job(run)
    if job is None or JobStatus(job.status) in FINISHED_STATUSES:
        raise InvalidStateError(f"run {name!r} is not running ({run.status})", fix="Attach to a running run")
    if job.backend is None:
        raise InvalidStateError(f"run {name!r} has no instance yet ({job.status})",
                                fix="Wait until it is running; `dstack ps` shows its status")
    compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project, backend_type=job.backend)
    conf = RunSpec.model_validate_json(run.spec).configuration
    about = {"ports": [p.model_dump() for p in getattr(conf, "ports", [])], "type": conf.type,
             "ide": getattr(conf, "ide", None), "working_dir": conf.job_working_dir()}
    instance = LaunchedInstance.model_validate_json(job.instance) if job.instance else None
    jump = compute.ssh_jump(instance=instance) if instance is not None else None
    # The job's own sshd (its address and host key, published by the agent once it listens) and,
    # through a jump host, the instance's host keys: read together.
    own, published = await asyncio.gather(
        asyncio.to_thread(compute.storage.get_json, f"{job.storage_prefix}/ssh.json"),
        asyncio.to_thread(compute.storage.get_json, f"{job.storage_prefix}/host_keys.json") if jump
        else asyncio.sleep(0, result=None))
    if not own:
        raise InvalidStateError(f"run {name!r} is not reachable over SSH yet ({job.status})",
                                fix="Wait until it is running; `dstack ps` shows its status")
    info: dict[str, object] = {
        "host": own["host"], "port": int(own["port"]), "user": own["user"],
        "host_keys": list(own.get("host_keys") or []), "forward_host": own.get("forward_host") or "localhost",
        **about}
    if jump is not None:
        # The instance's own sshd, pinned to the host keys its agent published.
        host_keys = (published or {}).get("keys") or []
        if not host_keys:
            raise InvalidStateError(f"run {name!r}: its instance has not published its SSH host key yet",
                                    fix="Wait a few seconds and try again")
        info["proxy_jump"] = {**jump.model_dump(), "user": (published or {}).get("ssh_user") or jump.user,
                              "host_keys": host_keys}
    return info


def run_to_model(run: RunModel) -> Run:
    return Run(
        id=run.id, name=run.name, project=run.project.name, user=run.user.name,
        status=JobStatus(run.status), reason=run.reason, exit_code=run.exit_code,
        submitted_at=run.submitted_at, finished_at=run.finished_at,
        spec=RunSpec.model_validate_json(run.spec), stop_requested=run.stop_requested,
        jobs=[job_to_model(j) for j in run.jobs], deployment=run.deployment,
    )


def record_job_instance(job: JobModel, offer: Offer, instance: Any, *, fleet_instance_id: str | None = None) -> None:
    """The job now runs on `instance` (a LaunchedInstance) from `offer`: provisioning, heartbeats
    counted from now, followed by the reconciler until the instance is released."""
    job.backend = offer.backend
    job.offer = offer.model_dump_json()
    job.price = offer.price
    job.instance_id = instance.instance_id
    job.instance = instance.model_dump_json()
    job.instance_terminated = False
    job.fleet_instance_id = fleet_instance_id
    job.heartbeat_at = utcnow()
    set_job_status(job, job.run, JobStatus.PROVISIONING)


def master_job(run: RunModel) -> JobModel | None:
    """The run's job: node 0's (a service: replica 0's), of its latest submission."""
    first = [j for j in run.jobs if j.job_num == 0] or run.jobs
    return max(first, key=lambda j: j.submission) if first else None


def job_to_model(job: Any) -> Job:
    """A Job from a JobModel or a row of its columns (`_JOB_COLUMNS`)."""
    return Job(
        id=job.id, name=job.name, submission=job.submission, job_num=job.job_num, status=JobStatus(job.status),
        deployment=job.deployment,
        reason=job.reason, exit_code=job.exit_code,
        offer=Offer.model_validate_json(job.offer) if job.offer else None,
        instance_id=job.instance_id,
        attempts=[ProvisioningAttempt.model_validate(a) for a in json.loads(job.attempts)],
        history=[StatusEvent.model_validate(e) for e in json.loads(job.history)],
        submitted_at=job.submitted_at, started_at=job.started_at, finished_at=job.finished_at,
    )


def add_agent_events(job: JobModel, events: list[dict[str, Any]]) -> None:
    """The agent's events (an image pull's progress) into the job's history, each once, in order;
    recorded under the status the job had then (provisioning)."""
    history = json.loads(job.history)
    seen = {(e["at"], e.get("reason")) for e in history}
    added = False
    for event in events:
        try:
            at = datetime.fromtimestamp(float(event["t"]), UTC)
            message = str(event["message"])[:500]
        except (KeyError, TypeError, ValueError):
            continue
        record = StatusEvent(at=at, status=JobStatus.PROVISIONING, reason=message).model_dump(mode="json")
        if (record["at"], record["reason"]) not in seen:
            history.append(record)
            seen.add((record["at"], record["reason"]))
            added = True
    if added:
        history.sort(key=lambda e: e["at"])
        job.history = json.dumps(history)
