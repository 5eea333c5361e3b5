"""Network volumes: apply (create or register), list, delete; and a run's volumes resolved for its
plan and its launch (where the run may go, which volume each path gets, who holds an EBS volume).

The provider's side runs in workers/volumes.py: creating, attaching once the run's instance is up,
detaching when the run ends, deleting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.backends.base import Compute, ProvisionedVolume, Requirements, VolumeLaunch
from dstack.core.errors import ConfigurationError, InvalidStateError, ResourceNotFoundError
from dstack.core.runs import FINISHED_STATUSES, RunSpec
from dstack.core.volumes import BLOCK_DEVICE_NAMES, Volume, VolumeSpec, VolumeStatus
from dstack.server.context import ServerContext
from dstack.server.models import JobModel, ProjectModel, RunModel, UserModel, VolumeModel, new_id, utcnow
from dstack.server.services.backends import compute_for

FIX_CREATE = "Create it with `dstack apply -f volume.dstack.yml` (`type: volume`); `dstack volume` lists them"


def network_volume_mounts(conf: Any) -> list[tuple[int, list[str], str]]:
    """(index in `volumes`, candidate names, path) of each network volume a run names."""
    return [(i, v.name, v.path) for i, v in enumerate(getattr(conf, "volumes", None) or []) if v.name]


def provisioned(volume: VolumeModel) -> ProvisionedVolume:
    return ProvisionedVolume(volume_id=volume.volume_id or "", region=volume.region,
                             availability_zone=volume.availability_zone, size_gb=volume.size_gb,
                             data=json.loads(volume.data or "{}"))


def volume_compute(ctx: ServerContext, project: ProjectModel, backend: str, *, field: str = "backend") -> Compute:
    if not any(b.type == backend for b in project.backends):
        raise ConfigurationError(f"project {project.name!r} has no {backend} backend", field=field,
                                 fix="Add that backend to the project, or choose one it has")
    return compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project, backend_type=backend)


def check_volume_permissions(compute: Compute, *, field: str) -> None:
    gap = compute.permissions_gap(features={"volumes"})
    if gap:
        raise ConfigurationError(gap, field=field)


# --- apply, list, delete ------------------------------------------------------------------------

async def apply_volume(*, session: AsyncSession, ctx: ServerContext, project: ProjectModel, user: UserModel,
                       spec: VolumeSpec) -> Volume:
    conf = spec.configuration
    compute = volume_compute(ctx, project, conf.backend)
    why = compute.volumes_unsupported(region=conf.region)
    if why:
        raise ConfigurationError(f"backend: {why}", field="backend" if "region" not in why else "region")
    check_volume_permissions(compute, field="backend")
    if conf.size is not None and not conf.size.min:
        raise ConfigurationError("size: give the volume's size, e.g. `size: 100GB`", field="size")
    name = conf.name or f"volume-{new_id()[:4]}"
    current = await _active(session, project, name)
    if current is not None:
        if VolumeSpec.model_validate_json(current.spec).configuration == conf.model_copy(update={"name": name}):
            return volume_to_model(current, await _attached_runs(session, [current]))
        raise InvalidStateError(f"volume {name!r} already exists ({current.status})", field="name",
                                fix=f"Delete it first with `dstack volume delete {name}`, or choose another name")
    spec = spec.model_copy(update={"configuration": conf.model_copy(update={"name": name})})
    volume = VolumeModel(id=new_id(), project_id=project.id, user_id=user.id, name=name,
                         status=VolumeStatus.SUBMITTED.value, spec=spec.model_dump_json(), backend=conf.backend,
                         region=conf.region, availability_zone=conf.availability_zone,
                         size_gb=float(math.ceil(conf.size.min)) if conf.size and conf.size.min else None,
                         volume_id=conf.volume_id, external=conf.volume_id is not None, data="{}",
                         created_at=utcnow(), deleted=False)
    session.add(volume)
    try:
        await session.commit()
    except IntegrityError:  # a parallel apply of the same name won
        await session.rollback()
        raise InvalidStateError(f"volume {name!r} already exists", field="name") from None
    ctx.volumes_wake.set()
    return await get_volume(session=session, project=project, name=name)


async def _active(session: AsyncSession, project: ProjectModel, name: str) -> VolumeModel | None:
    return await session.scalar(select(VolumeModel).where(
        VolumeModel.project_id == project.id, VolumeModel.name == name, VolumeModel.deleted.is_(False)))


async def list_volumes(*, session: AsyncSession, project: ProjectModel, include_deleted: bool = False) -> list[Volume]:
    query = select(VolumeModel).where(VolumeModel.project_id == project.id)
    if not include_deleted:
        query = query.where(VolumeModel.deleted.is_(False))
    volumes = list(await session.scalars(query.order_by(VolumeModel.created_at.desc()).limit(500)))
    runs = await _attached_runs(session, volumes)
    return [volume_to_model(v, runs) for v in volumes]


async def get_volume(*, session: AsyncSession, project: ProjectModel, name: str) -> Volume:
    volume = await _active(session, project, name)
    if volume is None:
        raise ResourceNotFoundError(f"volume {name!r} does not exist in project {project.name!r}", field="name",
                                    fix="See `dstack volume` for the project's volumes")
    return volume_to_model(volume, await _attached_runs(session, [volume]))


async def delete_volume(*, session: AsyncSession, ctx: ServerContext, project: ProjectModel, name: str) -> Volume:
    """Refused while a run that is not finished uses it; the provider's volume is deleted in the
    background (a registered one, `volume_id`, is only forgotten)."""
    volume = await _active(session, project, name)
    if volume is None:
        raise ResourceNotFoundError(f"volume {name!r} does not exist in project {project.name!r}", field="name",
                                    fix="See `dstack volume` for the project's volumes")
    runs = (await _attached_runs(session, [volume])).get(volume.id, [])
    if runs or volume.job_id:
        raise InvalidStateError(f"volume {name!r} is attached to {', '.join(runs) or 'a run that is ending'}",
                                fix=f"Stop {runs[0] if runs else 'the run'} first (`dstack stop "
                                    f"{runs[0] if runs else 'RUN'}`), then delete the volume")
    volume.deleted = True
    volume.status = VolumeStatus.DELETING.value
    await session.commit()
    ctx.volumes_wake.set()
    return volume_to_model(volume)


async def _attached_runs(session: AsyncSession, volumes: list[VolumeModel]) -> dict[str, list[str]]:
    """The runs, not finished, that use each volume (by name, in their spec)."""
    if not volumes:
        return {}
    project_ids = {v.project_id for v in volumes}
    rows = await session.execute(
        select(RunModel.name, RunModel.spec, RunModel.project_id)
        .where(RunModel.project_id.in_(project_ids), RunModel.status.not_in([s.value for s in FINISHED_STATUSES])))
    found: dict[str, list[str]] = {}
    by_name = {(v.project_id, v.name): v for v in volumes}
    for run_name, spec, project_id in rows:
        conf = RunSpec.model_validate_json(spec).configuration
        for _, names, _ in network_volume_mounts(conf):
            for name in names:
                volume = by_name.get((project_id, name))
                if volume is not None and run_name not in found.get(volume.id, []):
                    found.setdefault(volume.id, []).append(run_name)
    return found


def volume_to_model(volume: VolumeModel, runs: dict[str, list[str]] | None = None) -> Volume:
    return Volume(name=volume.name, project=volume.project.name, user=volume.user.name, backend=volume.backend,
                  region=volume.region, availability_zone=volume.availability_zone, size_gb=volume.size_gb,
                  volume_id=volume.volume_id, external=volume.external, status=VolumeStatus(volume.status),
                  reason=volume.reason, attached_to=(runs or {}).get(volume.id, []), created_at=volume.created_at,
                  spec=VolumeSpec.model_validate_json(volume.spec))


# --- a run's volumes ------------------------------------------------------------------------------

@dataclass
class RunVolume:
    id: str
    name: str
    path: str
    volume: ProvisionedVolume
    device: str


@dataclass
class RunVolumes:
    """A run's network volumes, all of one backend and region (and zone, where it has them)."""

    backend: str
    region: str
    availability_zone: str | None
    items: list[RunVolume]

    def narrow(self, requirements: Requirements) -> Requirements:
        """Only offers where the volumes are."""
        zones = [self.availability_zone] if self.availability_zone else requirements.availability_zones
        return requirements.model_copy(update={"regions": [self.region], "availability_zones": zones})

    def launches(self) -> list[VolumeLaunch]:
        return [VolumeLaunch(name=v.name, volume_id=v.volume.volume_id, availability_zone=v.volume.availability_zone,
                             data=v.volume.data) for v in self.items]

    def job_spec_entries(self, compute: Compute) -> list[dict[str, Any]]:
        """What the agent mounts (agent/volumes.py), in `volumes` order."""
        return [{"name": v.name, "volume_id": v.volume.volume_id, "path": v.path,
                 "mount": compute.volume_mount(volume=v.volume, name=v.name, device=v.device)} for v in self.items]


async def resolve_run_volumes(*, ctx: ServerContext, project: ProjectModel, conf: Any,
                              check_permissions: bool = True) -> RunVolumes | None:
    """The run's network volumes, or a ConfigurationError naming the `volumes` entry at fault
    (`check_permissions`: also ask the backend whether its credentials may attach them)."""
    mounts = network_volume_mounts(conf)
    if not mounts:
        return None
    field0 = f"volumes[{mounts[0][0]}]"
    if getattr(conf, "nodes", 1) > 1:
        raise ConfigurationError("volumes: network volumes with `nodes` are not supported yet (each node would need "
                                 "its own volume)", field=field0, fix="Use instance volumes (`/path:/path`)")
    if conf.creation_policy == "reuse" or conf.fleets:
        raise ConfigurationError("volumes: a run with network volumes gets an instance of its own for now, which "
                                 f"`{'fleets' if conf.fleets else 'creation_policy: reuse'}` forbids", field=field0,
                                 fix="Drop `fleets`/`creation_policy`, or the network volumes")
    async with ctx.db.session() as session:
        found = {v.name: v for v in await session.scalars(select(VolumeModel).where(
            VolumeModel.project_id == project.id, VolumeModel.deleted.is_(False),
            VolumeModel.name.in_([n for _, names, _ in mounts for n in names])))}
        await session.commit()
    items: list[RunVolume] = []
    placed: tuple[str, str, str | None] | None = None
    for index, names, path in mounts:
        field = f"volumes[{index}].name"
        candidates = [found[n] for n in names if n in found]
        if not candidates:
            raise ConfigurationError(f"volumes: no volume {' or '.join(map(repr, names))} in project "
                                     f"{project.name!r}", field=field, fix=FIX_CREATE)
        # Of several names (one per region, as upstream), the one where the others already are.
        fitting = [v for v in candidates if placed is None or (v.backend, v.region) == placed[:2]]
        if not fitting:
            raise ConfigurationError(f"volumes: {names[0]!r} is in {candidates[0].backend}/{candidates[0].region}, "
                                     f"the run's other volumes in {placed[0]}/{placed[1]}; a run's volumes must be in "
                                     "one region", field=field)
        volume = fitting[0]
        if volume.status != VolumeStatus.ACTIVE.value:
            raise InvalidStateError(f"volumes: volume {volume.name!r} is {volume.status}"
                                    + (f" ({volume.reason})" if volume.reason else ""), field=field,
                                    fix="Wait until `dstack volume` shows it active" if volume.status in (
                                        VolumeStatus.SUBMITTED.value, VolumeStatus.PROVISIONING.value)
                                    else "Delete it and create it again")
        zone = volume.availability_zone
        if placed is not None and zone and placed[2] and zone != placed[2]:
            raise ConfigurationError(f"volumes: {volume.name!r} is in {zone}, the run's other volumes in {placed[2]}: "
                                     "an instance can only attach volumes of its own zone", field=field)
        placed = (volume.backend, volume.region, placed[2] if placed and placed[2] else zone)
        items.append(RunVolume(id=volume.id, name=volume.name, path=path, volume=provisioned(volume),
                               device=BLOCK_DEVICE_NAMES[len(items)]))
    assert placed is not None
    backends = getattr(conf, "backends", None)
    if backends and placed[0] not in backends:
        raise ConfigurationError(f"volumes: the run's volumes are on {placed[0]}, which `backends` leaves out",
                                 field="backends")
    if conf.regions and placed[1] not in conf.regions:
        raise ConfigurationError(f"volumes: the run's volumes are in {placed[1]}, which `regions` leaves out",
                                 field="regions")
    compute = volume_compute(ctx, project, placed[0], field=field0)
    if check_permissions:
        check_volume_permissions(compute, field=field0)
    return RunVolumes(backend=placed[0], region=placed[1], availability_zone=placed[2], items=items)


async def claim_volumes(*, ctx: ServerContext, job_id: str, volumes: RunVolumes, exclusive: bool) -> str | None:
    """Give the job the volumes that attach to one instance at a time (one compare-and-set each,
    all or none); None when it holds them all, else what it waits for."""
    if not exclusive:
        return None
    async with ctx.db.session() as session:
        for item in volumes.items:
            attachment = json.dumps({"device": item.device, "state": "attaching"})
            result = await session.execute(
                update(VolumeModel).where(VolumeModel.id == item.id,
                                          (VolumeModel.job_id.is_(None)) | (VolumeModel.job_id == job_id))
                .values(job_id=job_id, attachment=attachment).execution_options(synchronize_session=False))
            if result.rowcount != 1:
                await session.rollback()
                holder = await session.scalar(
                    select(RunModel.name).join(JobModel, JobModel.run_id == RunModel.id)
                    .join(VolumeModel, VolumeModel.job_id == JobModel.id).where(VolumeModel.id == item.id))
                return f"waiting for volume {item.name!r} (attached to run {holder or '?'})"
        await session.commit()
    ctx.volumes_wake.set()
    return None


async def release_unlaunched(*, ctx: ServerContext, job_id: str) -> None:
    """A job that launched nothing gives its volumes back at once."""
    async with ctx.db.session() as session:
        await session.execute(update(VolumeModel).where(VolumeModel.job_id == job_id)
                              .values(job_id=None, attachment=None).execution_options(synchronize_session=False))
        await session.commit()
