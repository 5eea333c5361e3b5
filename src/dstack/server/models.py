"""ORM models. The DB is the source of truth; the bucket holds what agents exchange."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on both SQLite (which drops tzinfo) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class UserModel(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    global_role: Mapped[str] = mapped_column(String(20))  # admin | user
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProjectModel(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Read where needed (services/projects.members_of): not with every project a request or a run loads.
    members: Mapped[list[MemberModel]] = relationship(back_populates="project", lazy="raise")
    backends: Mapped[list[BackendModel]] = relationship(back_populates="project", lazy="selectin")


class MemberModel(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(20))  # admin | user | read-only
    project: Mapped[ProjectModel] = relationship(back_populates="members")
    user: Mapped[UserModel] = relationship(lazy="joined")


class BackendModel(Base):
    __tablename__ = "backends"
    __table_args__ = (UniqueConstraint("project_id", "type"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(20))
    config: Mapped[str] = mapped_column(Text)  # JSON, encrypted (it holds credentials)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Why it could not launch anything the last time (denied, bad credentials), until it launches
    # again or its configuration is saved: shown on the project's settings page.
    warning: Mapped[str | None] = mapped_column(Text, nullable=True)
    warning_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    project: Mapped[ProjectModel] = relationship(back_populates="backends")


class CodeModel(Base):
    """Code archives, kept in the DB so any replica can copy them to the bucket of the backend
    that runs the job."""

    __tablename__ = "codes"
    __table_args__ = (UniqueConstraint("project_id", "code_hash"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SecretModel(Base):
    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[str] = mapped_column(Text)  # encrypted
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RepoCredentialModel(Base):
    """Git credentials for a repo URL (`dstack init --repo URL --token …`): a JSON object, encrypted."""

    __tablename__ = "repo_credentials"
    __table_args__ = (UniqueConstraint("project_id", "url"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(1000))
    value: Mapped[str] = mapped_column(Text)  # encrypted JSON: token and username, or private_key and known_hosts
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RepoModel(Base):
    __tablename__ = "repos"
    __table_args__ = (UniqueConstraint("project_id", "repo_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    repo_id: Mapped[str] = mapped_column(String(100))
    info: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RunModel(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_project_submitted", "project_id", "submitted_at"),
        Index("ix_runs_project_name", "project_id", "name"),
        # One active run per name and project, enforced by the database (parallel submits race).
        # Partial on PostgreSQL too: the migrations say so there (0003, 0007, 0008). Here only the
        # SQLite spelling: a `postgresql_where` makes SQLAlchemy load the PostgreSQL dialect to check
        # it, ~20-40 ms of every start of a SQLite server. (The models are compared with the
        # migrations on SQLite: tests/server/test_migrations.py.)
        Index("ux_runs_active_name", "project_id", "name", unique=True,
              sqlite_where=text("finished_at IS NULL")),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    spec: Mapped[str] = mapped_column(Text)  # JSON RunSpec
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_abort: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A service's configuration version: re-applying a changed one rolls its replicas over to the next.
    deployment: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    project: Mapped[ProjectModel] = relationship(lazy="joined")
    user: Mapped[UserModel] = relationship(lazy="joined")
    jobs: Mapped[list[JobModel]] = relationship(
        back_populates="run", lazy="selectin", order_by="[JobModel.submission, JobModel.job_num]"
    )


class JobModel(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status", "status"), Index("ix_jobs_cleanup", "instance_terminated"),
                      Index("ix_jobs_run", "run_id", "submission", "job_num"))
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    submission: Mapped[int] = mapped_column(Integer, default=0)
    # The node of a multi-node task (0: the master); 0 for every other run.
    job_num: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    backend: Mapped[str | None] = mapped_column(String(20), nullable=True)
    offer: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON Offer
    instance_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    instance: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON LaunchedInstance
    # Written before every launch call (JSON LaunchIntent): after a crash between the cloud call and
    # recording `instance`, the reconciler finds the instance by it and adopts or terminates it.
    launch_intent: Mapped[str | None] = mapped_column(Text, nullable=True)
    instance_terminated: Mapped[bool] = mapped_column(Boolean, default=True)
    attempts: Mapped[str] = mapped_column(Text, default="[]")  # JSON list[ProvisioningAttempt]
    history: Mapped[str] = mapped_column(Text, default="[]")  # JSON list[StatusEvent]
    storage_prefix: Mapped[str] = mapped_column(Text)
    stop_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    heartbeat_seq: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lock_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lock_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    price: Mapped[float | None] = mapped_column(Float, nullable=True)
    # How many log lines the agent wrote (from its final status): readers wait until they have them all.
    log_events: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The run's `priority` (queue order, higher first) and, for a `schedule`, when it may start.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The fleet instance the job runs on (None: an instance of its own, torn down when it ends).
    fleet_instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"), nullable=True)
    # A service replica: the deployment it runs, and a stop of this job alone (scaled down, replaced
    # by a new deployment), sent once `stop_after` has passed (the proxy drains it first).
    deployment: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    stop_after: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    run: Mapped[RunModel] = relationship(back_populates="jobs")


class FleetModel(Base):
    """A `type: fleet` configuration applied: instances kept for runs to reuse."""

    __tablename__ = "fleets"
    __table_args__ = (
        Index("ux_fleets_active_name", "project_id", "name", unique=True,  # partial: see RunModel
              sqlite_where=text("deleted = false")),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))  # active | terminating | terminated
    spec: Mapped[str] = mapped_column(Text)  # JSON FleetSpec: the configuration and its text
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # An SSH fleet's private keys (JSON, encrypted): never in `spec`, never shown back.
    secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    project: Mapped[ProjectModel] = relationship(lazy="joined")
    user: Mapped[UserModel] = relationship(lazy="joined")
    instances: Mapped[list[InstanceModel]] = relationship(
        back_populates="fleet", lazy="selectin", order_by="InstanceModel.num")


class InstanceModel(Base):
    """A machine of a fleet: launched for the fleet, reused by the runs it fits, terminated when
    idle for the fleet's `idle_duration` or when the fleet is deleted."""

    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_status", "status"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    fleet_id: Mapped[str] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    num: Mapped[int] = mapped_column(Integer)
    # pending | provisioning | idle | busy | terminating | terminated
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    backend: Mapped[str | None] = mapped_column(String(20), nullable=True)
    offer: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON Offer
    price: Mapped[float | None] = mapped_column(Float, nullable=True)
    instance_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    instance: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON LaunchedInstance
    launch_intent: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON LaunchIntent
    storage_prefix: Mapped[str] = mapped_column(Text)
    # The jobs running on it now (JSON list of job ids): one on a cloud instance, several on a
    # host of an SSH fleet when its resources allow.
    job_ids: Mapped[str] = mapped_column(Text, default="[]")
    # What each of those jobs holds of the machine (JSON {job_id: {"cpus", "memory_gb", "gpus"}}):
    # a host of an SSH fleet runs several jobs while its resources allow (GPUs are not shared).
    allocations: Mapped[str] = mapped_column(Text, default="{}")
    # An SSH fleet host's agent reaches the bucket through the server with this token (sha256).
    agent_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    heartbeat_seq: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    idle_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lock_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lock_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    fleet: Mapped[FleetModel] = relationship(back_populates="instances", lazy="joined")


class VolumeModel(Base):
    """A `type: volume` configuration applied: a network volume (EBS, a Lambda file system) that
    runs attach and mount; it outlives them."""

    __tablename__ = "volumes"
    __table_args__ = (
        Index("ux_volumes_active_name", "project_id", "name", unique=True,  # partial: see RunModel
              sqlite_where=text("deleted = false")),
        Index("ix_volumes_status", "status"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(100))
    # submitted | provisioning | active | failed | deleting | deleted
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    spec: Mapped[str] = mapped_column(Text)  # JSON VolumeSpec
    backend: Mapped[str] = mapped_column(String(20))
    region: Mapped[str] = mapped_column(String(100))
    availability_zone: Mapped[str | None] = mapped_column(String(100), nullable=True)
    size_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    volume_id: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the provider's id
    external: Mapped[bool] = mapped_column(Boolean, default=False)  # registered by `volume_id`
    data: Mapped[str] = mapped_column(Text, default="{}")  # JSON, backend-private
    # The job a volume that attaches to one instance at a time (EBS) is given to, and how far:
    # JSON {"instance_id", "device", "state": attaching | attached | detaching}.
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    attachment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    lock_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lock_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    project: Mapped[ProjectModel] = relationship(lazy="joined")
    user: Mapped[UserModel] = relationship(lazy="joined")
