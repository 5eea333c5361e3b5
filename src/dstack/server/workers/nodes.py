"""Multi-node tasks (`nodes: N`): the master's job (node 0) is scheduled for the whole run. It takes
N idle hosts of one SSH fleet at once, or none (all or nothing); each node's job gets upstream's
DSTACK_NODES_* variables with the hosts' addresses and runs on the host's network, so the nodes
reach each other at those addresses.

Cloud instances are not taken for multi-node tasks yet: a job on the host network of a cloud
instance could reach the instance's metadata service, and with it the instance role."""

from __future__ import annotations

import json

from sqlalchemy import select, update

from dstack.backends.base import JobLaunch, LaunchedInstance, Requirements
from dstack.core.fleets import InstanceStatus
from dstack.core.runs import FINISHED_STATUSES, JobStatus, Offer, RunSpec
from dstack.server.context import ServerContext
from dstack.server.models import FleetModel, InstanceModel, JobModel, ProjectModel, RunModel, utcnow
from dstack.server.services.fleets import allocate, instance_fits
from dstack.server.services.job_specs import build_job_spec
from dstack.server.services.runs import set_job_status
from dstack.server.workers.fleet_jobs import release_fleet_instance, run_on_fleet_instance

# Upstream's variable: a pre-populated MPI hostfile, one node a line ("ADDRESS slots=GPUS").
MPI_HOSTFILE = "/dstack/mpi/hostfile"


def node_address(instance: InstanceModel) -> str:
    data = LaunchedInstance.model_validate_json(instance.instance).data if instance.instance else {}
    return str(data.get("internal_ip") or data.get("hostname") or "")


async def provision_nodes(ctx: ServerContext, *, master_id: str, project: ProjectModel, run_spec: RunSpec,
                          run_name: str, run_id: str, requirements: Requirements, secrets: dict[str, str],
                          launch: JobLaunch, archives: dict[str, bytes]) -> str | None:
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
                   InstanceModel.status == InstanceStatus.IDLE.value, InstanceModel.backend == "ssh")
            .order_by(InstanceModel.num)))
        await session.commit()
    by_fleet: dict[str, list[InstanceModel]] = {}
    for instance in candidates:
        if instance_fits(instance, instance.fleet, requirements=requirements, backend_types=["ssh"],
                         fleets=conf.fleets):
            by_fleet.setdefault(instance.fleet.name, []).append(instance)
    taken: list[InstanceModel] = []
    for instances in by_fleet.values():
        if len(instances) < count:
            continue
        taken = await _take(ctx, instances, jobs, requirements)
        if taken:
            break
    if not taken:
        best = max((len(v) for v in by_fleet.values()), default=0)
        return (f"nodes: {count} needs {count} idle hosts of one SSH fleet that fit the run "
                f"(the best fleet has {best}); multi-node tasks run on SSH fleets for now")
    addresses = [node_address(i) for i in taken]
    gpus = _gpus_per_node(run_spec)
    for job, instance in zip(jobs, taken, strict=True):
        spec = build_job_spec(settings=ctx.settings, run_spec=run_spec, run_name=run_name, run_id=run_id,
                              job_id=job.id, secrets=secrets)
        spec["env"].update({
            "DSTACK_NODES_NUM": str(count), "DSTACK_NODE_RANK": str(job.job_num),
            "DSTACK_MASTER_NODE_IP": addresses[0], "DSTACK_NODES_IPS": "\n".join(addresses),
            "DSTACK_GPUS_PER_NODE": str(gpus), "DSTACK_GPUS_NUM": str(gpus * count)})
        spec["network"] = "host"
        spec["env"]["DSTACK_MPI_HOSTFILE"] = MPI_HOSTFILE
        spec["mpi_hostfile"] = {"path": MPI_HOSTFILE,
                                "content": "".join(f"{a} slots={gpus or 1}\n" for a in addresses)}
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


async def end_waiting_nodes(ctx: ServerContext, master_id: str) -> None:
    """The master ended before its nodes were assigned (stopped, failed, no capacity): so do they."""
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
