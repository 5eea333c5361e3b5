"""The services this server proxies, kept in memory and refreshed from the DB: each one's replicas,
how each replica is reached, which are ready (answering, probes passing), its request rate and the
replica count its autoscaler asks for. One per server process; with several server replicas each
keeps its own (readiness is probed by each, RPS is what each one's proxy sees)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from dstack.core.runs import JobStatus, ReplicaInfo, Run, RunSpec, ServiceInfo
from dstack.server.proxy.autoscaling import RPS_WINDOW, RpsMeter, Scaler
from dstack.server.proxy.limits import RateLimiter
from dstack.server.proxy.tunnels import Tunnel

if TYPE_CHECKING:
    import aiohttp

    from dstack.server.context import ServerContext
    from dstack.server.models import JobModel, RunModel

logger = logging.getLogger("dstack.server.proxy")
# How often a replica that is not ready yet is tried (a ready one without probes is tried again only
# when a request to it fails).
NOT_READY_RETRY = 0.5


def time_scale() -> float:
    """DSTACK_SERVICE_TIME_SCALE: every autoscaling time (the RPS window, scale_up/down_delay) times
    this; tests run them in seconds (docs/services.md)."""
    return float(os.environ.get("DSTACK_SERVICE_TIME_SCALE", "1"))


@dataclass
class Replica:
    job_id: str
    num: int
    deployment: int
    address: tuple[str, int] | None = None
    tunnel: Tunnel | None = None
    connecting: bool = False
    ready: bool = False
    draining: bool = False
    in_flight: int = 0
    successes: int = 0
    next_probe: float = 0.0
    probing: bool = False
    problem: str = ""


@dataclass
class Service:
    run_id: str
    project: str
    name: str
    conf: Any
    deployment: int
    replicas: dict[str, Replica] = field(default_factory=dict)
    meter: RpsMeter = field(default_factory=lambda: RpsMeter(RPS_WINDOW * time_scale()))
    scaler: Scaler | None = None
    limiter: RateLimiter | None = None
    became_ready: asyncio.Event = field(default_factory=asyncio.Event)
    turn: itertools.count = field(default_factory=itertools.count)

    def ready_replicas(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.ready and not r.draining and r.address is not None]


class ServiceProxy:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.services: dict[tuple[str, str], Service] = {}
        self.by_run: dict[str, Service] = {}
        self.wake = asyncio.Event()
        self._client: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.tokens: dict[str, tuple[float, str | None, dict[str, str], bool]] = {}  # auth cache

    @property
    def client(self) -> aiohttp.ClientSession:
        """One HTTP client for every replica (aiohttp: its C parser keeps the proxy's cost per request
        low): keep-alive connections, no decompression (bytes pass as they came), no read timeout
        shorter than a model's longest pause between two chunks. Imported on first use: a server
        without services does not pay for it at start."""
        import aiohttp

        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=2000, limit_per_host=0, keepalive_timeout=30,
                                               enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=600.0),
                auto_decompress=False, trust_env=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"))
        return self._client

    # --- what the workers and services ask -------------------------------------------------------

    def server_key(self) -> tuple[Any, str]:
        """The server's own SSH key (private, public): its tunnels to replicas log in with it."""
        from dstack.core.sshkeys import server_key

        return server_key(self.ctx.settings.server_dir)

    def public_key(self) -> str:
        return self.server_key()[1]

    def in_flight(self, job_id: str) -> int:
        for service in self.services.values():
            replica = service.replicas.get(job_id)
            if replica is not None:
                return replica.in_flight
        return 0

    def is_ready(self, job_id: str) -> bool:
        for service in self.services.values():
            replica = service.replicas.get(job_id)
            if replica is not None:
                return replica.ready and not replica.draining
        return False

    def drain(self, job_id: str) -> None:
        """No new request goes to this replica (it is about to be stopped)."""
        for service in self.services.values():
            replica = service.replicas.get(job_id)
            if replica is not None:
                replica.draining = True

    def desired(self, run_id: str, conf: Any, live: int) -> int | None:
        """The replica count the service's autoscaler asks for now; None until the proxy knows it."""
        service = self.by_run.get(run_id)
        if service is None:
            return None
        if service.scaler is None:
            service.scaler = Scaler(current=live, time_scale=time_scale())
        return service.scaler.desired(conf, service.meter.rate())

    def annotate(self, run: Run) -> Run:
        """The run with its `service` part (URL, replicas and which are ready, RPS)."""
        conf = run.spec.configuration
        if conf.type != "service":
            return run
        service = self.by_run.get(run.id)
        live = [j for j in run.jobs if not j.status.finished]
        replicas = [ReplicaInfo(replica=j.job_num, job=j.name, status=j.status, deployment=j.deployment,
                                ready=self.is_ready(j.id)) for j in live]
        info = ServiceInfo(
            url=f"/proxy/services/{run.project}/{run.name}/", auth=conf.auth,
            model=conf.model.name if conf.model else None,
            model_url=f"/proxy/models/{run.project}/" if conf.model else None,
            replicas=replicas, ready=sum(r.ready for r in replicas),
            desired=service.scaler.current if service and service.scaler else (conf.replicas.min or 0),
            rps=round(service.meter.rate(), 2) if service else 0.0)
        return run.model_copy(update={"service": info})

    def find(self, project: str, name: str) -> Service | None:
        return self.services.get((project, name))

    def models(self, project: str) -> dict[str, Service]:
        return {s.conf.model.name: s for s in self.services.values() if s.project == project and s.conf.model}

    def demand(self) -> None:
        """A request waits and no replica is ready: scale from zero now, not at the next pass."""
        self.ctx.reconciler_wake.set()

    # --- the refresh pass (a worker loop) --------------------------------------------------------

    async def refresh(self, ctx: ServerContext) -> None:
        from dstack.server.models import RunModel
        from dstack.server.services.run_status import SERVICE_SPEC_LIKE
        from dstack.server.services.runs import ACTIVE_STATUSES

        async with ctx.db.session() as session:
            runs = list(await session.scalars(
                select(RunModel).where(RunModel.status.in_(ACTIVE_STATUSES), RunModel.spec.like(SERVICE_SPEC_LIKE))
                .options(selectinload(RunModel.jobs), selectinload(RunModel.project))))
            await session.commit()
        seen: set[str] = set()
        for run in runs:
            spec = json.loads(run.spec)
            if spec.get("configuration", {}).get("type") != "service":
                continue
            seen.add(run.id)
            self._update(run)
        for run_id in [r for r in self.by_run if r not in seen]:
            service = self.by_run.pop(run_id)
            if self.services.get((service.project, service.name)) is service:  # not a new run of that name
                del self.services[(service.project, service.name)]
            for replica in service.replicas.values():
                self._close(replica)
            service.became_ready.set()  # waiters see it is gone
        now = time.monotonic()
        for service in self.services.values():
            for replica in service.replicas.values():
                if replica.tunnel is not None and not replica.draining:
                    replica.tunnel.ensure()
                if replica.address is not None and not replica.probing and not replica.draining \
                        and now >= replica.next_probe and (not replica.ready or service.conf.probes):
                    replica.probing = True
                    self._spawn(self._probe(service, replica))

    def _update(self, run: RunModel) -> None:
        conf = RunSpec.model_validate_json(run.spec).configuration
        service = self.by_run.get(run.id)
        if service is None or service.name != run.name:
            service = Service(run_id=run.id, project=run.project.name, name=run.name, conf=conf,
                              deployment=run.deployment)
            self.by_run[run.id] = service
            self.services[(service.project, service.name)] = service
        if service.deployment != run.deployment or service.limiter is None:
            service.conf, service.deployment = conf, run.deployment
            service.limiter = RateLimiter(conf.rate_limits)
        wanted = {j.id: j for j in run.jobs if JobStatus(j.status) in (JobStatus.RUNNING, JobStatus.TERMINATING)}
        for job_id in [j for j in service.replicas if j not in wanted]:
            self._close(service.replicas.pop(job_id))
        for job in wanted.values():
            replica = service.replicas.get(job.id)
            if replica is None:
                if job.status != JobStatus.RUNNING.value or job.stop_reason:
                    continue
                replica = Replica(job_id=job.id, num=job.job_num, deployment=job.deployment)
                service.replicas[job.id] = replica
            if job.stop_reason or job.status != JobStatus.RUNNING.value:
                replica.draining = True
            if replica.address is None and not replica.connecting and not replica.draining:
                replica.connecting = True
                self._spawn(self._connect(run, job, replica, service))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close(self, replica: Replica) -> None:
        replica.ready, replica.draining = False, True
        if replica.tunnel is not None:
            tunnel, replica.tunnel = replica.tunnel, None
            self._spawn(asyncio.to_thread(tunnel.stop))

    async def _connect(self, run: RunModel, job: JobModel, replica: Replica, service: Service) -> None:
        """Where the replica's app is: the job's address as its agent published it (ssh.json), reached
        directly on this machine, else through a tunnel."""
        from dstack.backends.base import LaunchedInstance
        from dstack.server.services.backends import compute_for

        try:
            compute = compute_for(settings=self.ctx.settings, encryptor=self.ctx.encryptor, project=run.project,
                                  backend_type=job.backend)
            own = await asyncio.to_thread(compute.storage.get_json, f"{job.storage_prefix}/ssh.json")
            if not own:
                replica.problem = "its agent has not published its address yet"
                return
            app_port = int(service.conf.port.container_port)
            instance = LaunchedInstance.model_validate_json(job.instance) if job.instance else None
            jump = compute.ssh_jump(instance=instance) if instance is not None else None
            if jump is None:  # the job runs on this machine
                host = str(own.get("forward_host") or "localhost")
                replica.address = ("127.0.0.1" if host == "localhost" else host, app_port)
                return
            published = await asyncio.to_thread(compute.storage.get_json, f"{job.storage_prefix}/host_keys.json")
            keys = (published or {}).get("keys") or []
            if not keys:
                replica.problem = "its instance has not published its SSH host key yet"
                return
            key, _ = await asyncio.to_thread(self.server_key)
            tunnel = Tunnel(workdir=self.ctx.settings.server_dir / "proxy" / "tunnels" / job.id, key=key,
                            own=own, jump={**jump.model_dump(), "user": (published or {}).get("ssh_user") or jump.user,
                                           "host_keys": keys}, app_port=app_port)
            tunnel.ensure()
            replica.tunnel, replica.address = tunnel, tunnel.address
        except Exception as exc:  # tried again on the next pass
            replica.problem = f"cannot reach it: {exc}"
            logger.warning("service %s: replica %s: %s", service.name, replica.num, replica.problem)
        finally:
            replica.connecting = False

    async def _probe(self, service: Service, replica: Replica) -> None:
        """Ready once it answers HTTP (without `probes`), or once every probe has passed `ready_after`
        times in a row; a failed probe takes a ready replica out of rotation."""
        try:
            probes = service.conf.probes
            ok = all([await self._probe_once(replica, p) for p in probes]) if probes \
                else await self._answers(replica)
            replica.successes = replica.successes + 1 if ok else 0
            needed = max((p.ready_after for p in probes), default=1)
            was = replica.ready
            replica.ready = replica.successes >= needed
            if replica.ready and not was:
                logger.info("service %s: replica %s is ready", service.name, replica.num)
                service.became_ready.set()
                service.became_ready = asyncio.Event()
            interval = min((p.interval for p in probes), default=NOT_READY_RETRY)
            replica.next_probe = time.monotonic() + (interval if replica.ready or probes else NOT_READY_RETRY)
        finally:
            replica.probing = False

    async def _answers(self, replica: Replica) -> bool:
        import aiohttp

        assert replica.address is not None
        try:
            async with self.client.get(f"http://{replica.address[0]}:{replica.address[1]}/",
                                       timeout=aiohttp.ClientTimeout(total=5.0), allow_redirects=False) as response:
                await response.read()
            return True
        except (aiohttp.ClientError, TimeoutError) as exc:
            replica.problem = f"not answering: {type(exc).__name__}"
            return False

    async def _probe_once(self, replica: Replica, probe: Any) -> bool:
        import aiohttp

        assert replica.address is not None
        headers = {k: v for h in probe.headers for k, v in ([(h["name"], h["value"])] if "name" in h else h.items())}
        try:
            async with self.client.request(
                    probe.method.upper(), f"http://{replica.address[0]}:{replica.address[1]}{probe.url}",
                    headers=headers, data=probe.body, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=float(probe.timeout))) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            replica.problem = f"probe {probe.url}: {type(exc).__name__}"
            return False
        if not 200 <= status < 400:
            replica.problem = f"probe {probe.url}: HTTP {status}"
            return False
        return True

    def failed(self, service: Service, replica: Replica, why: str) -> None:
        """A request could not reach it: out of rotation until it answers again."""
        if replica.ready:
            logger.warning("service %s: replica %s is not reachable (%s)", service.name, replica.num, why)
        replica.ready, replica.successes, replica.problem = False, 0, why
        replica.next_probe = time.monotonic() + NOT_READY_RETRY

    async def close(self) -> None:
        for service in self.services.values():
            for replica in service.replicas.values():
                if replica.tunnel is not None:
                    await asyncio.to_thread(replica.tunnel.stop)
        if self._client is not None:
            await self._client.close()

