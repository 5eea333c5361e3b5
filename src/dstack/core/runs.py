"""Runs, jobs, offers and statuses: the models the server, the SDK and the CLI exchange."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from dstack.core.base import CoreModel
from dstack.core.configurations import AnyRunConfiguration
from dstack.core.pretty import FINISHED, status_text
from dstack.core.resources import InstanceResources


class JobStatus(StrEnum):
    SUBMITTED = "submitted"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    TERMINATING = "terminating"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    TERMINATED = "terminated"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset(JobStatus(status) for status in FINISHED)


class RunSpec(CoreModel):
    """What the client submits: the parsed configuration plus where the code comes from."""

    configuration: AnyRunConfiguration
    configuration_path: str = Field(default=".dstack.yml", max_length=1000)
    configuration_text: str | None = Field(default=None, max_length=65536,
                                           description="the configuration as its author wrote it (shown back)")
    repo_id: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,100}$")
    code_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                  description="sha256 of the uploaded code archive")
    files_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                   description="sha256 of the uploaded archive of the `files` entries")
    run_name: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]{0,39}$",
                                 description="1-40 lowercase letters, digits and dashes, starting with a letter")
    ssh_key_pub: str | None = Field(default=None, max_length=16384,
                                    pattern=r"^(ssh|ecdsa|sk)-[a-z0-9@.-]+ [A-Za-z0-9+/=]+( [^\n]*)?$",
                                    description="the user's public key, for `dstack attach`")


class Offer(CoreModel):
    backend: str
    region: str
    instance_type: str
    resources: InstanceResources
    price: float = Field(description="USD per hour")
    spot: bool = False
    availability: str = "available"


class ProvisioningAttempt(CoreModel):
    at: datetime
    backend: str
    region: str
    instance_type: str
    price: float
    spot: bool = False
    ok: bool
    reason: str | None = None


class StatusEvent(CoreModel):
    at: datetime
    status: JobStatus
    reason: str | None = None


class Job(CoreModel):
    id: str
    name: str
    submission: int = 0
    job_num: int = Field(default=0, description="the node of a multi-node task (0: the master), or the "
                                                "replica of a service")
    deployment: int = Field(default=0, description="a service replica: the deployment it runs")
    status: JobStatus
    reason: str | None = None
    exit_code: int | None = None
    offer: Offer | None = None
    instance_id: str | None = None
    attempts: list[ProvisioningAttempt] = Field(default_factory=list)
    history: list[StatusEvent] = Field(default_factory=list)
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Run(CoreModel):
    id: str
    name: str
    project: str
    user: str
    status: JobStatus
    reason: str | None = None
    exit_code: int | None = None
    submitted_at: datetime
    finished_at: datetime | None = None
    spec: RunSpec
    jobs: list[Job] = Field(default_factory=list)
    stop_requested: bool = False
    deployment: int = Field(default=0, description="a service: its configuration's version (re-applying a "
                                                   "changed one rolls the replicas over to the next)")
    service: ServiceInfo | None = Field(default=None, description="a service: where it is served, its replicas")

    @property
    def job(self) -> Job | None:
        """The run's job: the master node's (a service: replica 0's), of its latest submission."""
        first = [j for j in self.jobs if j.job_num == 0] or self.jobs
        return max(first, key=lambda j: j.submission) if first else None

    @property
    def nodes(self) -> list[Job]:
        """The latest submission's jobs, one per node."""
        latest = self.jobs[-1].submission if self.jobs else 0
        return [j for j in self.jobs if j.submission == latest]

    def status_line(self) -> str:
        """`running`, `failed (exit code 3)`, `stopped (inactive for 4s …)`: as the CLI shows it."""
        return status_text(self.status, self.reason, self.exit_code)

    def duration_seconds(self, now: datetime) -> float | None:
        job = self.job
        if job is None or job.started_at is None:
            return None
        end = job.finished_at or now
        return max(0.0, (end - job.started_at).total_seconds())


class ReplicaInfo(CoreModel):
    replica: int
    job: str
    status: JobStatus
    deployment: int
    ready: bool = Field(description="gets traffic: it answers (its probes pass) and is not being drained")


class ServiceInfo(CoreModel):
    """A service as this server's proxy sees it."""

    url: str = Field(description="its path on the server: /proxy/services/PROJECT/RUN/")
    model: str | None = Field(default=None, description="the model name it serves at the project's model endpoint")
    model_url: str | None = Field(default=None, description="the project's OpenAI-compatible endpoint: "
                                                            "/proxy/models/PROJECT/")
    auth: bool = True
    gateway: str = Field(default="server", description="who serves it: `server` (this server's proxy)")
    replicas: list[ReplicaInfo] = Field(default_factory=list)
    ready: int = 0
    desired: int = 0
    rps: float = Field(default=0.0, description="requests per second through the proxy, over the last minute")


class RunPlan(CoreModel):
    run_spec: RunSpec
    offers: list[Offer]
    total_offers: int
    max_price: float | None = None
    project: str
    user: str


class LogEvent(CoreModel):
    timestamp: float
    message: str


class LogPage(CoreModel):
    events: list[LogEvent]
    next_token: str
    finished: bool = Field(description="the job has ended and every log line has been returned")
    more: bool = Field(default=False, description="more lines may be there now (a page cut short, or a "
                                                  "read the log store throttled): ask again at once")


class GPUMetrics(CoreModel):
    util: float | None = Field(default=None, description="utilization, percent")
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None


class MetricsSample(CoreModel):
    t: float = Field(description="unix time of the sample")
    cpu_percent: float | None = Field(default=None, description="the machine's CPU use, percent of all cores")
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    gpus: list[GPUMetrics] = Field(default_factory=list)


class RunMetrics(CoreModel):
    """The latest samples of the run's machine (the agent takes one every DSTACK_METRICS_INTERVAL)."""

    samples: list[MetricsSample] = Field(default_factory=list)
    gpu_low_for: float | None = Field(default=None, description="seconds some GPU has stayed under the "
                                                                "utilization_policy floor")
    ssh_inactive_for: float | None = Field(default=None, description="seconds since an SSH connection to the "
                                                                     "job was last open (inactivity_duration)")


class Artifact(CoreModel):
    path: str
    size: int


Run.model_rebuild()
