"""Multi-node tasks (`nodes: N`): the master's job (node 0) is scheduled for the whole run. It takes
N idle hosts of one SSH fleet at once, else launches N cloud instances (cloud_nodes.py); all or
nothing either way. Each node's job gets upstream's DSTACK_NODES_* variables with the nodes'
addresses and runs on the host's network, so the nodes reach each other at those addresses."""

from __future__ import annotations

import json

from sqlalchemy import bindparam, select, update

from dstack.backends.base import JobLaunch, LaunchedInstance, Requirements
from dstack.core.fleets import InstanceStatus
from dstack.core.runs import FINISHED_STATUSES, JobStatus, Offer, RunSpec
from dstack.server.context import ServerContext
from dstack.server.models import FleetModel, InstanceModel, JobModel, ProjectModel, RunModel, utcnow
from dstack.server.services.fleets import allocate, instance_fits, multinode_host
from dstack.server.services.job_specs import build_job_spec
from dstack.server.services.run_status import set_job_status
from dstack.server.workers.cloud_nodes import addresses_env, gated, launch_nodes, node_env
from dstack.server.workers.fleet_jobs import release_fleet_instance, run_on_fleet_instance

# Upstream's variable: a pre-populated MPI hostfile, one node a line ("ADDRESS slots=GPUS").
MPI_HOSTFILE = "/dstack/mpi/hostfile"


def node_address(instance: InstanceModel) -> str:
    data = LaunchedInstance.model_validate_json(instance.instance).data if instance.instance else {}
    return str(data.get("internal_ip") or data.get("private_ip") or data.get("hostname") or "")


async def provision_nodes(ctx: ServerContext, *, master_id: str, project: ProjectModel, run_spec: RunSpec,
                          run_name: str, run_id: str, requirements: Requirements, secrets: dict[str, str],
                          launch: JobLaunch, archives: dict[str, bytes], backend_types: list[str]) -> str | None:
    """Start every node, or none: None when they were assigned, else why not (no capacity)."""
    conf = run_spec.configuration
    count = conf.nodes
    async with ctx.db.session() as session:
        master = await session.get(JobModel, master_id)
        assert master is not None
        jobs = list(await session.scalars(select(JobModel).where(
            JobModel.run_id == master.run_id, JobModel.submission == master.submission).order_by(JobModel.job_num)))
        candidates = list(await session.scalars(
            select(InstanceModel).join(FleetModel, FleetModel.id == InstanceModel.fleet_id)
            .where(InstanceModel.project_id == project.id, FleetModel.deleted.is_(False),
                   InstanceModel.status == InstanceStatus.IDLE.value)
            .order_by(InstanceModel.num)))
        await session.commit()
    by_fleet: dict[str, list[InstanceModel]] = {}
    for instance in candidates:
        if multinode_host(instance, instance.fleet) and instance_fits(
                instance, instance.fleet, requirements=requirements, backend_types=["ssh", *backend_types],
                fleets=conf.fleets):
            by_fleet.setdefault(instance.fleet.name, []).append(instance)
    taken: list[InstanceModel] = []
    for instances in by_fleet.values():
        if len(instances) < count:
            continue
        taken = await _take(ctx, instances, jobs, requirements)
        if taken:
            break
    gpus = _gpus_per_node(run_spec)
    if not taken:
        best = max((len(v) for v in by_fleet.values()), default=0)
        if conf.fleets or conf.creation_policy == "reuse":
            return (f"nodes: {count} needs {count} idle instances of one SSH or cluster fleet that fit the run "
                    f"(the best fleet has {best}); the run may not launch instances")
        why = await launch_nodes(ctx, jobs=jobs, project=project, run_spec=run_spec, run_name=run_name,
                                 run_id=run_id, requirements=requirements, secrets=secrets, launch=launch,
                                 archives=archives, backend_types=backend_types, gpus=gpus, hostfile=MPI_HOSTFILE)
        if why and best:
            why += f"; no SSH fleet has {count} idle hosts that fit (the best has {best})"
        return why
    addresses = [node_address(i) for i in taken]
    for job, instance in zip(jobs, taken, strict=True):
        spec = build_job_spec(settings=ctx.settings, run_spec=run_spec, run_name=run_name, run_id=run_id,
                              job_id=job.id, secrets=secrets)
        shared = addresses_env(addresses, gpus=gpus, hostfile=MPI_HOSTFILE)
        spec["env"].update({**node_env(count=count, rank=job.job_num, gpus=gpus), **shared["env"]})
        spec["network"] = "host"
        spec["mpi_hostfile"] = shared["mpi_hostfile"]
        spec["start_gate"] = gated(conf.startup_order, job.job_num)
        node_launch = launch.model_copy(update={"job_id": job.id, "job_prefix": job.storage_prefix})
        await run_on_fleet_instance(ctx, job_id=job.id, project=project, instance=instance, launch=node_launch,
                                    spec=spec, archives=archives)
    return None


async def _take(ctx: ServerContext, instances: list[InstanceModel], jobs: list[JobModel],
                requirements: Requirements) -> list[InstanceModel]:
    """N instances for N jobs, each with one compare-and-set; all given back if one is taken meanwhile."""
    taken: list[InstanceModel] = []
    for instance in instances:
        if len(taken) == len(jobs):
            break
        job = jobs[len(taken)]
        share = allocate(Offer.model_validate_json(instance.offer), {}, requirements)
        async with ctx.db.session() as session:
            result = await session.execute(
                update(InstanceModel)
                .where(InstanceModel.id == instance.id, InstanceModel.status == InstanceStatus.IDLE.value)
                .values(status=InstanceStatus.BUSY.value, job_ids=json.dumps([job.id]), idle_since=None,
                        allocations=json.dumps({job.id: share}))
                .execution_options(synchronize_session=False))
            await session.commit()
        if result.rowcount == 1:
            instance.allocations = json.dumps({job.id: share})
            taken.append(instance)
    if len(taken) < len(jobs):
        for instance, job in zip(taken, jobs, strict=False):
            await release_fleet_instance(ctx, instance_id=instance.id, job_id=job.id, reason=None)
        return []
    return taken


def _gpus_per_node(run_spec: RunSpec) -> int:
    gpu = run_spec.configuration.resources.gpu
    return (gpu.count.min or 0) if gpu and gpu.count.max != 0 else 0


# Whether a master's run has nodes still waiting for it (built once: it runs after every scheduling).
_MASTER = JobModel.__table__.alias("master")
_HAS_WAITING_NODES = select(JobModel.id).where(
    JobModel.run_id == _MASTER.c.run_id, JobModel.submission == _MASTER.c.submission, JobModel.job_num > 0,
    JobModel.status == JobStatus.SUBMITTED.value, _MASTER.c.id == bindparam("master_id"),
    _MASTER.c.status.in_([s.value for s in FINISHED_STATUSES])).limit(1)


async def end_waiting_nodes(ctx: ServerContext, master_id: str) -> None:
    """The master ended before its nodes were assigned (stopped, failed, no capacity): so do they."""
    async with ctx.db.transaction() as conn:  # one plain statement for the usual case: nothing waits
        if (await conn.execute(_HAS_WAITING_NODES, {"master_id": master_id})).first() is None:
            return
    async with ctx.db.session() as session:
        master = await session.get(JobModel, master_id)
        if master is None or JobStatus(master.status) not in FINISHED_STATUSES:
            return
        run = await session.get(RunModel, master.run_id)  # its jobs come with it (selectin)
        assert run is not None
        waiting = [j for j in run.jobs if j.submission == master.submission and j.job_num > 0
                   and j.status == JobStatus.SUBMITTED.value]
        for job in waiting:
            set_job_status(job, run, JobStatus(master.status), reason=master.reason or "the master node ended")
            job.finished_at = utcnow()
        await session.commit()
