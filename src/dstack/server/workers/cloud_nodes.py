"""Multi-node tasks on cloud instances: N instances of one offer launched for the N nodes, in one
zone (the first node's), all or none. A launch that fails terminates the nodes launched so far,
and the next offer is tried.

Each node's agent starts at once but waits for nodes.json (the others' addresses are known only once
every node is launched); the containers run on the host network, and the agent keeps them from
the instance's metadata service (agent/metadata_guard.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from dstack.backends.base import Compute, JobLaunch, LaunchedInstance, LaunchError, LaunchIntent, Requirements
from dstack.core.runs import Offer, ProvisioningAttempt, RunSpec
from dstack.server.context import ServerContext
from dstack.server.models import JobModel, ProjectModel, RunModel, utcnow
from dstack.server.services.backends import compute_for
from dstack.server.services.job_specs import build_job_spec, stage_job
from dstack.server.services.offers import find_offers, multinode_backends
from dstack.server.services.runs import record_job_instance
from dstack.server.workers.common import record_intent

logger = logging.getLogger("dstack.server.scheduler")
MAX_OFFERS = 5
Node = tuple[JobModel, LaunchedInstance]


def node_env(*, count: int, rank: int, gpus: int) -> dict[str, str]:
    return {"DSTACK_NODES_NUM": str(count), "DSTACK_NODE_RANK": str(rank), "DSTACK_GPUS_PER_NODE": str(gpus),
            "DSTACK_GPUS_NUM": str(gpus * count)}


def gated(startup_order: str | None, rank: int) -> bool:
    """Whether node `rank` waits for the server's go (start.json): the workers until the master
    runs (`master-first`), the master until every worker runs (`workers-first`)."""
    return (startup_order == "master-first" and rank > 0) or (startup_order == "workers-first" and rank == 0)


def addresses_env(addresses: list[str], *, gpus: int, hostfile: str) -> dict[str, Any]:
    """What every node learns once all have addresses: upstream's variables and the MPI hostfile."""
    return {"env": {"DSTACK_MASTER_NODE_IP": addresses[0], "DSTACK_NODES_IPS": "\n".join(addresses),
                    "DSTACK_MPI_HOSTFILE": hostfile},
            "mpi_hostfile": {"path": hostfile, "content": "".join(f"{a} slots={gpus or 1}\n" for a in addresses)}}


async def launch_nodes(ctx: ServerContext, *, jobs: list[JobModel], project: ProjectModel, run_spec: RunSpec,
                       run_name: str, run_id: str, requirements: Requirements, secrets: dict[str, str],
                       launch: JobLaunch, archives: dict[str, bytes], backend_types: list[str],
                       gpus: int, hostfile: str) -> str | None:
    """None when every node has an instance; else why not (the run then waits or fails)."""
    backends, reasons = multinode_backends(ctx, project, backend_types)
    if not backends:
        return "; ".join(reasons) or "no cloud backend of the project can launch a multi-node task's instances"
    search = await find_offers(ctx=ctx, project=project, backend_types=backends, requirements=requirements)
    if not search.offers:
        return str(search.no_offers_error(requirements))
    failures: list[str] = []
    for offer in search.offers[:MAX_OFFERS]:
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                              backend_type=offer.backend)
        launched, why = await _launch_all(ctx, compute=compute, offer=offer, jobs=jobs, run_spec=run_spec,
                                          run_name=run_name, run_id=run_id, secrets=secrets, launch=launch,
                                          archives=archives, gpus=gpus)
        if why is not None:
            failures.append(f"{offer.backend}/{offer.region}/{offer.instance_type}: {why}")
            await _record_attempts(ctx, jobs[0].id, offer, ok=False, reason=why)
            continue
        addresses = [str(i.data.get("private_ip") or "") for _, i in launched]
        shared = addresses_env(addresses, gpus=gpus, hostfile=hostfile)
        try:
            for job, _ in launched:
                await asyncio.to_thread(compute.storage.put_json, f"{job.storage_prefix}/nodes.json", shared)
        except Exception as exc:  # noqa: BLE001 - the nodes cannot start without it: give them back
            await _terminate(compute, launched)
            failures.append(f"could not hand the nodes their addresses: {exc}")
            continue
        async with ctx.db.session() as session:
            rows = {j.id: j for j in await session.scalars(
                select(JobModel).where(JobModel.id.in_([j.id for j, _ in launched]))
                .options(selectinload(JobModel.run).selectinload(RunModel.jobs)))}  # the run's status needs them
            for job, instance in launched:
                row = rows[job.id]
                attempt = ProvisioningAttempt(at=utcnow(), backend=offer.backend, region=offer.region,
                                              instance_type=offer.instance_type, price=offer.price, spot=offer.spot,
                                              ok=True, reason=f"node {job.job_num} of {len(jobs)}")
                row.attempts = json.dumps(json.loads(row.attempts) + [attempt.model_dump(mode="json")])
                record_job_instance(row, offer, instance)
            await session.commit()
        ctx.reconciler_wake.set()
        return None
    return f"nodes: not all {len(jobs)} nodes could be launched (none was kept): " + "; ".join(failures)


async def _launch_all(ctx: ServerContext, *, compute: Compute, offer: Offer, jobs: list[JobModel],
                      run_spec: RunSpec, run_name: str, run_id: str, secrets: dict[str, str], launch: JobLaunch,
                      archives: dict[str, bytes], gpus: int) -> tuple[list[Node], str | None]:
    launched: list[Node] = []
    zone: str | None = None
    for job in jobs:
        spec = build_job_spec(settings=ctx.settings, run_spec=run_spec, run_name=run_name, run_id=run_id,
                              job_id=job.id, secrets=secrets)
        spec["env"].update(node_env(count=len(jobs), rank=job.job_num, gpus=gpus))
        spec["network"] = "host"
        spec["nodes_pending"] = True
        spec["start_gate"] = gated(run_spec.configuration.startup_order, job.job_num)
        node_launch = launch.model_copy(update={
            "job_id": job.id, "job_prefix": job.storage_prefix,
            # The first node's zone for the others: one network, the shortest paths between them.
            "availability_zones": [zone] if zone else launch.availability_zones})
        try:
            extras = await asyncio.to_thread(stage_job, compute, node_launch, spec, archives)
            await record_intent(ctx, job.id, LaunchIntent(job_id=job.id, job_prefix=job.storage_prefix, offer=offer,
                                                          read_keys=node_launch.read_keys, at=time.time()))
            instance = await asyncio.to_thread(compute.launch, job=node_launch, offer=offer)
        except LaunchError as exc:
            await _terminate(compute, launched)
            return [], f"node {job.job_num}: {exc.reason}"
        instance.data["spec_extras"] = extras
        launched.append((job, instance))
        zone = zone or instance.data.get("availability_zone")
    return launched, None


async def _terminate(compute: Compute, launched: list[Node]) -> None:
    """All or nothing: the nodes launched so far go. One that cannot be terminated now is left to
    the reaper (no job owns it)."""
    for _, instance in launched:
        try:
            await asyncio.to_thread(compute.terminate, instance=instance)
        except Exception:  # noqa: BLE001
            logger.warning("terminating node instance %s failed; the reaper will", instance.instance_id,
                           exc_info=True)


async def _record_attempts(ctx: ServerContext, job_id: str, offer: Offer, *, ok: bool, reason: str) -> None:
    async with ctx.db.session() as session:
        job = await session.get(JobModel, job_id)
        assert job is not None
        attempt = ProvisioningAttempt(at=utcnow(), backend=offer.backend, region=offer.region,
                                      instance_type=offer.instance_type, price=offer.price, spot=offer.spot, ok=ok,
                                      reason=reason)
        job.attempts = json.dumps(json.loads(job.attempts) + [attempt.model_dump(mode="json")])
        await session.commit()
