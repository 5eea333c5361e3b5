"""Fleets: plan, apply, list, delete; and the match of a run with an idle fleet instance.

A cloud fleet's instances are launched through the same offers and failover as runs
(workers/fleets.py), each with an agent that stays and runs the jobs assigned to it
(agent/instance.py); the scheduler gives a run an idle instance that fits before it launches one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.backends.base import Requirements
from dstack.core.errors import ConfigurationError, InvalidStateError, NoOffersError, ResourceNotFoundError
from dstack.core.fleets import (
    DEFAULT_FLEET_IDLE_DURATION,
    Fleet,
    FleetPlan,
    FleetSpec,
    FleetStatus,
    Instance,
    InstanceStatus,
    instance_name,
)
from dstack.core.infra_configurations import FleetConfiguration, SSHConfig
from dstack.core.resources import ResourcesSpec
from dstack.core.runs import JobStatus, Offer
from dstack.server.context import ServerContext
from dstack.server.models import (
    FleetModel,
    InstanceModel,
    JobModel,
    ProjectModel,
    RunModel,
    UserModel,
    new_id,
    utcnow,
)
from dstack.server.services.backends import compute_for
from dstack.server.services.offers import filter_offers, find_offers

LIVE_INSTANCE_STATUSES = [InstanceStatus.PENDING.value, InstanceStatus.PROVISIONING.value,
                          InstanceStatus.IDLE.value, InstanceStatus.BUSY.value, InstanceStatus.TERMINATING.value]


def instance_prefix(project: str, instance_id: str) -> str:
    return f"dstack/instances/{project}/{instance_id}"


def fleet_requirements(conf: FleetConfiguration) -> Requirements:
    return Requirements(resources=conf.resources or ResourcesSpec(), spot_policy=conf.spot_policy or "on-demand",
                        max_price=conf.max_price, regions=conf.regions, availability_zones=conf.availability_zones,
                        instance_types=conf.instance_types, reservation=conf.reservation, tags=conf.tags or {})


def nodes_to_provision(conf: FleetConfiguration) -> int:
    """`nodes: N` provisions N; `min..max` provisions `target` if given, else `min` (at least one
    when the range allows none: a fleet of nothing is created by naming no fleet at all)."""
    nodes = conf.nodes
    if nodes is None:
        return 0
    if nodes.target is not None:
        return nodes.target
    return nodes.min if nodes.min is not None else 0


def idle_duration(conf: FleetConfiguration) -> int:
    """Seconds an idle instance is kept (-1: for ever)."""
    return DEFAULT_FLEET_IDLE_DURATION if conf.idle_duration is None else conf.idle_duration


def fleet_backends(ctx: ServerContext, project: ProjectModel, conf: FleetConfiguration) -> tuple[list[str], list[str]]:
    """(backends that can launch this fleet's instances, why the others cannot)."""
    wanted = conf.backends
    usable, reasons = [], []
    for backend in project.backends:
        if wanted and backend.type not in wanted:
            continue
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                              backend_type=backend.type)
        why = compute.fleets_unsupported() or (compute.clusters_unsupported() if conf.placement == "cluster" else None)
        if why:
            reasons.append(why)
        else:
            usable.append(backend.type)
    return usable, reasons


async def get_plan(*, session: AsyncSession, ctx: ServerContext, project: ProjectModel, user: UserModel,
                   spec: FleetSpec) -> FleetPlan:
    conf = spec.configuration
    current = await _active_fleet(session, project, conf.name) if conf.name else None
    if conf.ssh_config is not None:
        ssh_hosts(conf)  # every host has a user and a key, or a clear error naming the field
        if ctx.settings.listen_port is None:
            raise ConfigurationError("SSH fleets need the server started by `dstack server` (its port is where "
                                     "the hosts' tunnels end)", field="ssh_config")
        return FleetPlan(spec=spec, project=project.name, user=user.name, nodes=len(conf.ssh_config.hosts),
                         offers=[], total_offers=0, current=fleet_to_model(current) if current else None)
    backends, reasons = fleet_backends(ctx, project, conf)
    if conf.placement == "cluster" and not backends:  # e.g. the IAM statement it needs is missing
        raise ConfigurationError(f"placement: cluster: {'; '.join(reasons) or 'the project has no backends'}",
                                 field="placement")
    requirements = fleet_requirements(conf)
    search = await find_offers(ctx=ctx, project=project, backend_types=backends, requirements=requirements)
    if not search.offers:
        search.rejections[:0] = reasons
        if not backends:
            raise NoOffersError(f"no backend of project {project.name!r} can launch fleet instances: "
                                f"{'; '.join(reasons) or 'it has none'}",
                                fix="Add an AWS backend to the project, or run without a fleet")
        raise search.no_offers_error(requirements)
    return FleetPlan(spec=spec, project=project.name, user=user.name, nodes=nodes_to_provision(conf),
                     offers=search.offers[:50], total_offers=len(search.offers),
                     current=fleet_to_model(current) if current else None)


async def apply_fleet(*, session: AsyncSession, ctx: ServerContext, project: ProjectModel, user: UserModel,
                      spec: FleetSpec) -> Fleet:
    plan = await get_plan(session=session, ctx=ctx, project=project, user=user, spec=spec)
    conf = spec.configuration
    name = conf.name or await _unique_name(session, project)
    if plan.current is not None:
        raise InvalidStateError(f"fleet {name!r} already exists ({plan.current.status.value}, "
                                f"{len([i for i in plan.current.instances if not i.status.finished])} instances)",
                                field="name", fix=f"Delete it first with `dstack delete {name}`, or choose "
                                                  "another name")
    secret = None
    if conf.ssh_config is not None:  # the keys leave the spec: encrypted, in a column of their own
        secret = ctx.encryptor.encrypt(json.dumps([host.keys for host in ssh_hosts(conf)]))
        conf = conf.model_copy(update={"ssh_config": without_keys(conf.ssh_config)})
    spec = spec.model_copy(update={"configuration": conf.model_copy(update={"name": name})})
    fleet = FleetModel(id=new_id(), project_id=project.id, user_id=user.id, name=name, secret=secret,
                       status=FleetStatus.ACTIVE.value, spec=spec.model_dump_json(), created_at=utcnow())
    session.add(fleet)
    for num in range(plan.nodes):
        instance = _new_instance(fleet, project, num)
        if conf.ssh_config is not None:
            instance.backend = "ssh"
        session.add(instance)
    try:
        await session.commit()
    except IntegrityError:  # a parallel apply of the same name won
        await session.rollback()
        raise InvalidStateError(f"fleet {name!r} already exists", field="name",
                                fix=f"Delete it first with `dstack delete {name}`") from None
    ctx.fleets_wake.set()
    return await get_fleet(session=session, project=project, name=name)


def _new_instance(fleet: FleetModel, project: ProjectModel, num: int) -> InstanceModel:
    instance_id = new_id()
    return InstanceModel(id=instance_id, project_id=project.id, fleet_id=fleet.id, num=num,
                         status=InstanceStatus.PENDING.value, storage_prefix=instance_prefix(project.name, instance_id),
                         job_ids="[]", allocations="{}", heartbeat_seq=0, created_at=utcnow())


@dataclass
class SSHHostPlan:
    """One host of an SSH fleet, resolved: its address, user, jump host and keys (private)."""

    hostname: str
    port: int
    user: str
    keys: list[str]
    proxy_jump: dict[str, Any] | None
    internal_ip: str | None


def ssh_hosts(conf: FleetConfiguration, stored_keys: list[list[str]] | None = None) -> list[SSHHostPlan]:
    """The fleet's hosts; with `stored_keys` (the fleet's decrypted secret) in place of the spec's keys."""
    ssh = conf.ssh_config
    assert ssh is not None
    hosts = []
    for i, host in enumerate(ssh.hosts):
        if stored_keys is not None:
            user = host.user or ssh.user or ""
            jump = host.proxy_jump or ssh.proxy_jump
            hosts.append(SSHHostPlan(
                hostname=host.hostname, port=host.port or ssh.port or 22, user=user, keys=stored_keys[i],
                proxy_jump={"hostname": jump.hostname, "port": jump.port or 22, "user": jump.user or user}
                if jump is not None else None, internal_ip=host.internal_ip))
            continue
        field = f"ssh_config.hosts[{i}]"
        user = host.user or ssh.user
        if not user:
            raise ConfigurationError(f"{field} ({host.hostname}): no user to log in as", field=f"{field}.user",
                                     fix="Set ssh_config.user (or the host's user)")
        key = host.ssh_key or ssh.ssh_key
        if key is None:
            raise ConfigurationError(f"{field} ({host.hostname}): no key to log in with",
                                     field="ssh_config.identity_file",
                                     fix="Set ssh_config.identity_file (the CLI sends the key's content)")
        jump = host.proxy_jump or ssh.proxy_jump
        keys = [key.private]
        if jump is not None and jump.ssh_key is not None:
            keys.append(jump.ssh_key.private)
        hosts.append(SSHHostPlan(
            hostname=host.hostname, port=host.port or ssh.port or 22, user=user, keys=keys,
            proxy_jump={"hostname": jump.hostname, "port": jump.port or 22, "user": jump.user or user}
            if jump is not None else None, internal_ip=host.internal_ip))
    return hosts


def without_keys(ssh: SSHConfig) -> SSHConfig:
    def strip(item: Any) -> Any:
        return item.model_copy(update={"ssh_key": None}) if item is not None else None

    return ssh.model_copy(update={"ssh_key": None, "proxy_jump": strip(ssh.proxy_jump),
                                  "hosts": [h.model_copy(update={"ssh_key": None, "proxy_jump": strip(h.proxy_jump)})
                                            for h in ssh.hosts]})


async def _unique_name(session: AsyncSession, project: ProjectModel) -> str:
    while True:
        name = f"fleet-{random.randrange(16**4):04x}"
        if await _active_fleet(session, project, name) is None:
            return name


async def _active_fleet(session: AsyncSession, project: ProjectModel, name: str | None) -> FleetModel | None:
    return await session.scalar(select(FleetModel).where(
        FleetModel.project_id == project.id, FleetModel.name == name, FleetModel.deleted.is_(False)))


async def list_fleets(*, session: AsyncSession, project: ProjectModel, include_deleted: bool = False) -> list[Fleet]:
    query = select(FleetModel).where(FleetModel.project_id == project.id)
    if not include_deleted:
        query = query.where(FleetModel.status != FleetStatus.TERMINATED.value)
    fleets = list(await session.scalars(query.order_by(FleetModel.created_at.desc()).limit(500)))
    runs = await _runs_by_instance(session, [i.id for f in fleets for i in f.instances])
    return [fleet_to_model(f, runs) for f in fleets]


async def _runs_by_instance(session: AsyncSession, instance_ids: list[str]) -> dict[str, list[str]]:
    """The runs each instance serves now."""
    if not instance_ids:
        return {}
    rows = await session.execute(
        select(JobModel.fleet_instance_id, RunModel.name).join(RunModel, RunModel.id == JobModel.run_id)
        .where(JobModel.fleet_instance_id.in_(instance_ids), JobModel.instance_terminated.is_(False)))
    found: dict[str, list[str]] = {}
    for instance_id, run_name in rows:
        found.setdefault(instance_id, []).append(run_name)
    return found


async def get_fleet(*, session: AsyncSession, project: ProjectModel, name: str) -> Fleet:
    fleet = await _active_fleet(session, project, name)
    if fleet is None:
        raise ResourceNotFoundError(f"fleet {name!r} does not exist in project {project.name!r}", field="name",
                                    fix="See `dstack fleet` for the project's fleets")
    await session.refresh(fleet, ["instances"])
    return fleet_to_model(fleet, await _runs_by_instance(session, [i.id for i in fleet.instances]))


async def delete_fleet(*, session: AsyncSession, ctx: ServerContext, project: ProjectModel, name: str) -> Fleet:
    """Its idle instances are terminated; one that runs a job is refused, naming the runs."""
    fleet = await _active_fleet(session, project, name)
    if fleet is None:
        raise ResourceNotFoundError(f"fleet {name!r} does not exist in project {project.name!r}", field="name",
                                    fix="See `dstack fleet` for the project's fleets")
    await session.refresh(fleet, ["instances"])
    busy = [i for i in fleet.instances if i.status == InstanceStatus.BUSY.value]
    if busy:
        runs = sorted({r for i in busy for r in await _instance_runs(session, i)})
        raise InvalidStateError(f"fleet {name!r} has instances running {', '.join(runs) or 'jobs'}",
                                fix=f"Stop {'them' if len(runs) > 1 else 'it'} first (`dstack stop "
                                    f"{runs[0] if runs else 'RUN'}`), then delete the fleet")
    fleet.status = FleetStatus.TERMINATING.value
    fleet.deleted = True
    for instance in fleet.instances:
        if instance.status in (InstanceStatus.PENDING.value,):
            instance.status = InstanceStatus.TERMINATED.value
            instance.reason = "fleet deleted"
            instance.finished_at = utcnow()
        elif instance.status in (InstanceStatus.PROVISIONING.value, InstanceStatus.IDLE.value):
            instance.status = InstanceStatus.TERMINATING.value
            instance.reason = "fleet deleted"
    await session.commit()
    ctx.fleets_wake.set()
    return fleet_to_model(fleet)


async def _instance_runs(session: AsyncSession, instance: InstanceModel) -> list[str]:
    ids = json.loads(instance.job_ids or "[]")
    if not ids:
        return []
    return list(await session.scalars(
        select(RunModel.name).join(JobModel, JobModel.run_id == RunModel.id).where(JobModel.id.in_(ids))))


def fleet_to_model(fleet: FleetModel, runs: dict[str, list[str]] | None = None) -> Fleet:
    return Fleet(name=fleet.name, project=fleet.project.name, user=fleet.user.name, status=FleetStatus(fleet.status),
                 created_at=fleet.created_at, spec=FleetSpec.model_validate_json(fleet.spec),
                 instances=[instance_to_model(fleet, i, (runs or {}).get(i.id)) for i in fleet.instances])


def instance_to_model(fleet: FleetModel, instance: InstanceModel, runs: list[str] | None = None) -> Instance:
    offer = Offer.model_validate_json(instance.offer) if instance.offer else None
    return Instance(name=instance_name(fleet.name, instance.num), num=instance.num,
                    status=InstanceStatus(instance.status), reason=instance.reason, backend=instance.backend,
                    region=offer.region if offer else None, instance_type=offer.instance_type if offer else None,
                    resources=offer.resources if offer else None, price=instance.price,
                    spot=offer.spot if offer else False, runs=runs or [], created_at=instance.created_at,
                    idle_since=instance.idle_since, finished_at=instance.finished_at)


# --- runs on fleet instances ------------------------------------------------------------------

def instance_fits(instance: InstanceModel, fleet: FleetModel, *, requirements: Requirements,
                  backend_types: list[str], fleets: list[str] | None) -> bool:
    """An idle instance the run may take: of a fleet it names (any, if it names none), of a backend
    it allows, and whose offer meets its requirements (resources, spot policy, price, regions)."""
    if instance.offer is None or instance.backend not in backend_types:
        return False
    if fleets and fleet.name not in fleets:
        return False
    offer = Offer.model_validate_json(instance.offer)
    if instance.backend == "ssh":  # a shared host: the job is measured against the share it would get
        offer = shared_view(offer, json.loads(instance.allocations or "{}"), requirements)
        if offer is None:
            return False
    return bool(filter_offers(instance.backend, [offer], requirements).offers)


def shared_view(offer: Offer, allocations: dict[str, Any], requirements: Requirements) -> Offer | None:
    """What a job would get of a host of an SSH fleet, beside the jobs there: as many of the free CPUs,
    memory and GPUs as its ranges take (its minimum at least), or None if that is not free."""
    share = allocate(offer, allocations, requirements)
    if share is None:
        return None
    spec = requirements.resources
    used_cpus = sum(a.get("cpus", 0) for a in allocations.values())
    used_memory = sum(a.get("memory_gb", 0) for a in allocations.values())
    free_cpus, free_memory = offer.resources.cpus - used_cpus, offer.resources.memory_gb - used_memory
    cpus = min(free_cpus, spec.cpu.max) if spec.cpu.max is not None else free_cpus
    memory = min(free_memory, spec.memory.max) if spec.memory.max is not None else free_memory
    gpus = [offer.resources.gpus[int(i)] for i in share["gpus"]]
    resources = offer.resources.model_copy(update={"cpus": cpus, "memory_gb": memory, "gpus": gpus})
    return offer.model_copy(update={"resources": resources})


def allocate(offer: Offer, allocations: dict[str, Any], requirements: Requirements) -> dict[str, Any] | None:
    """The share of the machine a job takes (its minimum CPUs and memory, whole GPUs), or None if
    what the running jobs leave free is not enough."""
    resources = requirements.resources
    cpus = resources.cpu.min or 1
    memory = resources.memory.min or 0.0
    gpu = resources.gpu
    gpu_count = (gpu.count.min or 0) if gpu and gpu.count.max != 0 else 0
    used_cpus = sum(a.get("cpus", 0) for a in allocations.values())
    used_memory = sum(a.get("memory_gb", 0) for a in allocations.values())
    used_gpus = {g for a in allocations.values() for g in a.get("gpus", [])}
    free_gpus = [str(i) for i in range(len(offer.resources.gpus)) if str(i) not in used_gpus]
    if allocations and (used_cpus + cpus > offer.resources.cpus or used_memory + memory > offer.resources.memory_gb
                        or gpu_count > len(free_gpus)):
        return None
    return {"cpus": cpus, "memory_gb": memory, "gpus": free_gpus[:gpu_count]}


def fleet_backend_types(backend_types: list[str], wanted: list[str] | None) -> list[str]:
    """The backends whose fleet instances a run may take: its own, and SSH fleet hosts (upstream's
    `remote`) unless its `backends` leaves them out."""
    return [*backend_types, "ssh"] if not wanted or {"ssh", "remote"} & set(wanted) else backend_types


def takeable_instances(project_id: str) -> tuple[Any, dict[str, str]]:
    """The query of a project's instances a job may take, with its parameters: idle ones, and SSH fleet
    hosts busy with other jobs (shared while resources allow); cheapest first, busy hosts before idle
    ones (small jobs pack onto shared hosts, leaving whole hosts free for the jobs that need them)."""
    return _TAKEABLE, {"project_id": project_id}


# Built once (every submit plans, every job is scheduled: building it cost more than running it empty).
_TAKEABLE = (select(InstanceModel).join(FleetModel, FleetModel.id == InstanceModel.fleet_id)
             .where(InstanceModel.project_id == bindparam("project_id"), FleetModel.deleted.is_(False),
                    (InstanceModel.status == InstanceStatus.IDLE.value)
                    | ((InstanceModel.status == InstanceStatus.BUSY.value) & (InstanceModel.backend == "ssh")))
             .order_by(InstanceModel.price, InstanceModel.status, InstanceModel.num))
# Whether the project has any instance a job may take (most projects, most of the time: none).
ANY_TAKEABLE = _TAKEABLE.with_only_columns(InstanceModel.id).order_by(None).limit(1)


def multinode_host(instance: InstanceModel, fleet: FleetModel) -> bool:
    """An instance a multi-node task's node may take: a host of an SSH fleet, or an instance of a
    cloud fleet with `placement: cluster` (its instances share a network, a zone, a placement group)."""
    return instance.backend == "ssh" or FleetSpec.model_validate_json(fleet.spec).configuration.placement == "cluster"


async def idle_offers(*, ctx: ServerContext, project: ProjectModel, requirements: Requirements,
                      backend_types: list[str], fleets: list[str] | None, multinode: bool = False) -> list[Offer]:
    """The idle instances a run could take now, as offers (availability "idle"), cheapest first
    (`multinode`: those a multi-node task's nodes may take)."""
    async with ctx.db.transaction() as conn:  # mostly none: a plain statement says so, no session
        if (await conn.execute(ANY_TAKEABLE, {"project_id": project.id})).first() is None:
            return []
    async with ctx.db.session() as session:
        instances = list(await session.scalars(*takeable_instances(project.id)))
        await session.commit()
    offers = []
    for i in instances:
        offer = Offer.model_validate_json(i.offer)
        # instance_fits measures a shared SSH host against the share still free on it.
        if multinode and not multinode_host(i, i.fleet):
            continue
        if instance_fits(i, i.fleet, requirements=requirements, backend_types=backend_types, fleets=fleets):
            offers.append(offer.model_copy(update={"availability": "idle"}))
    return offers


def idle_expired(instance: InstanceModel, fleet: FleetModel, now: datetime) -> bool:
    conf = FleetSpec.model_validate_json(fleet.spec).configuration
    if conf.ssh_config is not None:
        return False  # the team's own hosts stay in their fleet until it is deleted
    limit = idle_duration(conf)
    return (limit >= 0 and instance.idle_since is not None
            and (now - instance.idle_since).total_seconds() >= limit)


def job_is_active(job: JobModel) -> bool:
    return JobStatus(job.status) not in (JobStatus.DONE, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.TERMINATED)
