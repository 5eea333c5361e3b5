"""Fleet instances: pending -> provisioning (launched through the offers, cheapest first, with the
runs' failover) -> idle (its agent heard from) <-> busy (the scheduler assigns a job; the reconciler
gives it back) -> terminating (idle for `idle_duration`, fleet deleted, lost) -> terminated."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import subprocess
import time
from datetime import datetime
from typing import Any

from sqlalchemy import select

from dstack.backends.base import InstanceCheck, JobLaunch, LaunchedInstance, LaunchError, LaunchIntent
from dstack.backends.ssh.compute import agent_paths, machine_offer
from dstack.backends.ssh.connection import TUNNELS
from dstack.backends.ssh.models import SSHHostData
from dstack.core.fleets import FleetSpec, FleetStatus, InstanceStatus, instance_name, placement_group_name
from dstack.core.runs import Offer
from dstack.server.context import ServerContext
from dstack.server.models import FleetModel, InstanceModel, utcnow
from dstack.server.services.backends import compute_for
from dstack.server.services.fleets import (
    LIVE_INSTANCE_STATUSES,
    fleet_backends,
    fleet_requirements,
    idle_expired,
    ssh_hosts,
)
from dstack.server.services.offers import find_offers
from dstack.server.services.users import hash_token
from dstack.server.workers.common import for_each, under_lease

logger = logging.getLogger("dstack.server.fleets")
MAX_LAUNCH_ATTEMPTS = 10
_FOLLOWED = [s for s in LIVE_INSTANCE_STATUSES if s != InstanceStatus.BUSY.value]


async def process_fleets_once(ctx: ServerContext) -> None:
    async with ctx.db.session() as session:
        ids = list(await session.scalars(select(InstanceModel.id).where(InstanceModel.status.in_(_FOLLOWED))))
        terminating = list(await session.scalars(
            select(FleetModel).where(FleetModel.status == FleetStatus.TERMINATING.value)))
        ended = []
        for fleet in terminating:  # a deleted fleet ends once its last instance has
            await session.refresh(fleet, ["instances"])
            if all(i.status == InstanceStatus.TERMINATED.value for i in fleet.instances):
                ended.append(fleet)
        await session.commit()
    for fleet in ended:
        if await _placement_group_gone(ctx, fleet):
            async with ctx.db.session() as session:
                row = await session.get(FleetModel, fleet.id)
                assert row is not None
                row.status = FleetStatus.TERMINATED.value
                await session.commit()
    await for_each(ids, lambda instance_id: _process(ctx, instance_id))
    await ensure_ssh_tunnels(ctx)


async def _placement_group_gone(ctx: ServerContext, fleet: FleetModel) -> bool:
    """A cluster fleet's placement group is deleted with it (once its instances are gone)."""
    conf = FleetSpec.model_validate_json(fleet.spec).configuration
    backends = {i.backend for i in fleet.instances if i.backend and i.offer}
    if conf.placement != "cluster" or not backends:
        return True
    try:
        for backend in backends:
            compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=fleet.project,
                                  backend_type=backend)
            await asyncio.to_thread(compute.delete_placement_group, name=placement_group_name(fleet.id))
    except Exception as exc:  # noqa: BLE001 - e.g. EC2 still terminating its instances: next pass
        logger.info("placement group of fleet %s: %s", fleet.name, exc)
        return False
    return True


async def _process(ctx: ServerContext, instance_id: str) -> None:
    await under_lease(ctx, instance_id, model=InstanceModel, what="fleet instance", step=lambda i: _step(ctx, i))


async def _load(session: Any, instance_id: str) -> InstanceModel:
    return (await session.scalars(select(InstanceModel).where(InstanceModel.id == instance_id))).one()


async def _step(ctx: ServerContext, instance_id: str) -> None:
    async with ctx.db.session() as session:
        instance = await _load(session, instance_id)
        fleet = instance.fleet
        project = fleet.project
        status = InstanceStatus(instance.status)
        await session.commit()
    if status == InstanceStatus.PENDING:
        await _launch(ctx, instance_id, fleet, project)
    elif status == InstanceStatus.TERMINATING:
        await _terminate(ctx, instance_id)
    elif status in (InstanceStatus.PROVISIONING, InstanceStatus.IDLE):
        await _follow(ctx, instance_id)


async def _launch(ctx: ServerContext, instance_id: str, fleet: FleetModel, project: Any) -> None:
    conf = FleetSpec.model_validate_json(fleet.spec).configuration
    if conf.ssh_config is not None:
        await _provision_ssh(ctx, instance_id, fleet, project)
        return
    async with ctx.db.session() as session:
        instance = await _load(session, instance_id)
        intent = LaunchIntent.model_validate_json(instance.launch_intent) if instance.launch_intent else None
        prefix, num = instance.storage_prefix, instance.num
        await session.commit()
    if intent is not None:  # a launch this (or a dead) replica began: adopt what it started, if anything
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                              backend_type=intent.offer.backend)
        found = await asyncio.to_thread(compute.find_launched, intent=intent)
        if found is not None:
            await _record_launch(ctx, instance_id, intent.offer, found)
            return
    backends, reasons = fleet_backends(ctx, project, conf)
    requirements = fleet_requirements(conf)
    launch = JobLaunch(job_id=instance_id, project=project.name, run_name=instance_name(fleet.name, num),
                       job_prefix=prefix, fleet_instance=True, fleet=fleet.name, tags=conf.tags or {},
                       availability_zones=conf.availability_zones, reservation=conf.reservation)
    first: Offer | None = None
    if conf.placement == "cluster":  # one placement group; the first instance's type and zone for all
        launch.placement_group = placement_group_name(fleet.id)
        waiting, placed = await _first_instance(ctx, fleet.id, num)
        if waiting:
            return  # launched once an instance before it is
        if placed is not None:
            first, zone = placed
            backends = [first.backend]
            requirements = requirements.model_copy(update={"regions": [first.region],
                                                           "instance_types": [first.instance_type]})
            launch.availability_zones = [zone] if zone else launch.availability_zones
    search = await find_offers(ctx=ctx, project=project, backend_types=backends, requirements=requirements)
    if first is not None:
        search.offers = [o for o in search.offers if o.spot == first.spot]
    failures: list[str] = []
    broken: set[str] = set()
    for offer in search.offers[:MAX_LAUNCH_ATTEMPTS]:
        if offer.backend in broken:
            continue
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                              backend_type=offer.backend)
        async with ctx.db.session() as session:
            (await _load(session, instance_id)).launch_intent = LaunchIntent(
                job_id=instance_id, job_prefix=prefix, offer=offer, at=time.time()).model_dump_json()
            await session.commit()
        try:
            launched = await asyncio.to_thread(compute.launch, job=launch, offer=offer)
        except LaunchError as exc:
            failures.append(f"{offer.backend}/{offer.region}/{offer.instance_type}: {exc.reason}")
            if exc.backend_wide:
                logger.warning("backend %s of project %s cannot launch: %s", offer.backend, project.name, exc.reason)
                broken.add(offer.backend)
            continue
        await _record_launch(ctx, instance_id, offer, launched)
        return
    why = "; ".join(failures) or "; ".join(reasons + search.rejections) or "no offers match"
    async with ctx.db.session() as session:
        instance = await _load(session, instance_id)
        instance.status = InstanceStatus.TERMINATED.value
        instance.reason = f"could not be provisioned: {why}"
        instance.finished_at = utcnow()
        await session.commit()


async def _first_instance(ctx: ServerContext, fleet_id: str,
                          num: int) -> tuple[bool, tuple[Offer, str | None] | None]:
    """For a cluster fleet's instance `num`: (wait: an instance before it is still to be launched,
    the offer and zone of the first one launched, if any)."""
    async with ctx.db.session() as session:
        before = list(await session.scalars(select(InstanceModel).where(
            InstanceModel.fleet_id == fleet_id, InstanceModel.num < num).order_by(InstanceModel.num)))
        await session.commit()
    if any(i.status == InstanceStatus.PENDING.value for i in before):
        return True, None
    first = next((i for i in before if i.offer and i.instance), None)
    if first is None:
        return False, None
    data = LaunchedInstance.model_validate_json(first.instance).data
    return False, (Offer.model_validate_json(first.offer), data.get("availability_zone"))


def ssh_target(ctx: ServerContext, fleet: FleetModel, instance: InstanceModel) -> tuple[Any, SSHHostData]:
    """The SSH compute and the host of an SSH fleet's instance (keys from the fleet's secret)."""
    conf = FleetSpec.model_validate_json(fleet.spec).configuration
    plan = ssh_hosts(conf, json.loads(ctx.encryptor.decrypt(fleet.secret or "")))[instance.num]
    agent_dir, socket_path = agent_paths(instance.id)
    host = SSHHostData(hostname=plan.hostname, port=plan.port, user=plan.user, proxy_jump=plan.proxy_jump,
                       internal_ip=plan.internal_ip, agent_dir=agent_dir, socket=socket_path)
    compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=fleet.project, backend_type="ssh")
    return compute, compute.target(fleet_id=fleet.id, host=host, private_keys=plan.keys)


async def _provision_ssh(ctx: ServerContext, instance_id: str, fleet: FleetModel, project: Any) -> None:
    """Install and start the agent on the host, or say per host what is wrong with it."""
    token = secrets.token_urlsafe(32)
    async with ctx.db.session() as session:
        instance = await _load(session, instance_id)
        instance.agent_token_hash = hash_token(token)
        await session.commit()
    compute, target = ssh_target(ctx, fleet, instance)
    try:
        machine = await asyncio.to_thread(compute.provision_host, target=target, instance_id=instance_id,
                                          prefix=instance.storage_prefix, token=token,
                                          server_port=ctx.settings.listen_port or 0)
    except (LaunchError, OSError, subprocess.SubprocessError) as exc:
        reason = exc.reason if isinstance(exc, LaunchError) else f"host {target.host.hostname}: {exc}"
        logger.warning("SSH fleet %s of project %s: %s", fleet.name, project.name, reason)
        async with ctx.db.session() as session:
            instance = await _load(session, instance_id)
            instance.status = InstanceStatus.TERMINATED.value
            instance.reason = reason
            instance.finished_at = utcnow()
            instance.agent_token_hash = None
            await session.commit()
        return
    launched = LaunchedInstance(instance_id=f"ssh:{target.host.user}@{target.host.hostname}:{target.host.port}",
                                region="remote", data={**target.host.model_dump(), "instance_uuid": instance_id})
    await _record_launch(ctx, instance_id, machine_offer(machine, target.host), launched)


async def ensure_ssh_tunnels(ctx: ServerContext) -> None:
    """Every live SSH fleet host keeps its tunnel (restarted here after a blip or a server restart)."""
    if ctx.settings.listen_port is None:
        return
    async with ctx.db.session() as session:
        instances = list(await session.scalars(select(InstanceModel).where(
            InstanceModel.backend == "ssh", InstanceModel.status.in_(
                [InstanceStatus.PROVISIONING.value, InstanceStatus.IDLE.value, InstanceStatus.BUSY.value]))))
        await session.commit()
    for instance in instances:
        try:
            _, target = ssh_target(ctx, instance.fleet, instance)
            if TUNNELS.ensure(instance.id, target, ctx.settings.listen_port):
                logger.info("(re)opened the tunnel to SSH fleet host %s", target.host.hostname)
        except Exception:
            logger.exception("the tunnel of SSH fleet instance %s", instance.id)


async def _record_launch(ctx: ServerContext, instance_id: str, offer: Offer, launched: LaunchedInstance) -> None:
    async with ctx.db.session() as session:
        instance = await _load(session, instance_id)
        instance.backend = offer.backend
        instance.offer = offer.model_dump_json()
        instance.price = offer.price
        instance.instance_id = launched.instance_id
        instance.instance = launched.model_dump_json()
        instance.status = InstanceStatus.PROVISIONING.value
        instance.heartbeat_at = utcnow()
        await session.commit()


async def _follow(ctx: ServerContext, instance_id: str) -> None:
    """A provisioning or idle instance: its agent's heartbeat, the cloud's word, its idle time."""
    async with ctx.db.session() as session:
        instance = await _load(session, instance_id)
        fleet = instance.fleet
        await session.commit()
    compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=fleet.project,
                          backend_type=instance.backend)
    launched = LaunchedInstance.model_validate_json(instance.instance)
    heartbeat = await asyncio.to_thread(compute.storage.get_json, f"{instance.storage_prefix}/heartbeat.json")
    try:
        check = await asyncio.to_thread(compute.check_instance, instance=launched)
    except Exception:
        logger.exception("checking fleet instance %s failed", launched.instance_id)
        check = InstanceCheck()
    now = utcnow()
    async with ctx.db.session() as session:
        instance = await _load(session, instance_id)
        if instance.status not in (InstanceStatus.PROVISIONING.value, InstanceStatus.IDLE.value):
            return  # taken by a job meanwhile: the job's reconciler follows it now
        if check.data is not None:
            instance.instance = launched.model_copy(update={"data": check.data}).model_dump_json()
        if heartbeat and int(heartbeat.get("seq", 0)) != instance.heartbeat_seq:
            instance.heartbeat_seq = int(heartbeat["seq"])
            instance.heartbeat_at = now
            if instance.status == InstanceStatus.PROVISIONING.value:
                instance.status = InstanceStatus.IDLE.value
                instance.idle_since = now
                ctx.scheduler_wake.set()  # runs waiting for capacity may fit here
        silent = (now - instance.heartbeat_at).total_seconds() if instance.heartbeat_at else 0.0
        if check.failure:
            _end(instance, check.failure, now, terminate=False)
        elif check.booting and not instance.heartbeat_seq:
            instance.heartbeat_at = now  # the provisioning timeout counts from when it is up
        elif not instance.heartbeat_seq and silent > ctx.settings.provisioning_timeout:
            _end(instance, "the instance did not start in time", now)
        elif instance.heartbeat_seq and silent > ctx.settings.heartbeat_timeout and instance.backend == "ssh":
            # The team's own host: not given up, its agent is installed and started again.
            instance.status = InstanceStatus.PENDING.value
            instance.reason = "its agent stopped answering: reinstalling it"
            instance.heartbeat_seq = 0
        elif instance.heartbeat_seq and silent > ctx.settings.heartbeat_timeout:
            _end(instance, "instance lost (its agent stopped answering)", now)
        elif instance.status == InstanceStatus.IDLE.value and idle_expired(instance, fleet, now):
            _end(instance, "idle for the fleet's idle_duration", now)
        await session.commit()
    if instance.status == InstanceStatus.TERMINATING.value:
        await _terminate(ctx, instance_id)


def _end(instance: InstanceModel, reason: str, now: datetime, *, terminate: bool = True) -> None:
    instance.reason = reason
    if terminate:
        instance.status = InstanceStatus.TERMINATING.value
    else:  # the cloud has ended it already
        instance.status = InstanceStatus.TERMINATED.value
        instance.finished_at = now


async def _terminate(ctx: ServerContext, instance_id: str) -> None:
    async with ctx.db.session() as session:
        instance = await _load(session, instance_id)
        project = instance.fleet.project
        await session.commit()
    if instance.instance is not None and instance.backend == "ssh":  # the team's own host: stop, clean up
        compute, target = ssh_target(ctx, instance.fleet, instance)
        try:
            await asyncio.to_thread(compute.stop_host, target=target, instance_id=instance_id,
                                    prefix=instance.storage_prefix)
        except Exception:  # an unreachable host keeps a stale agent; it exits when its token is refused
            logger.warning("cleaning up SSH fleet host %s failed", target.host.hostname, exc_info=True)
    elif instance.instance is not None and instance.backend is not None:
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                              backend_type=instance.backend)
        try:
            await asyncio.to_thread(compute.terminate, instance=LaunchedInstance.model_validate_json(instance.instance))
        except Exception:  # tried again on the next pass
            logger.warning("terminating fleet instance %s failed; trying again", instance_id, exc_info=True)
            return
    async with ctx.db.session() as session:
        instance = await _load(session, instance_id)
        instance.status = InstanceStatus.TERMINATED.value
        instance.finished_at = utcnow()
        instance.job_ids = json.dumps([])
        instance.allocations = json.dumps({})
        instance.agent_token_hash = None  # an agent left behind can reach nothing any more
        await session.commit()
    ctx.fleets_wake.set()
