"""Server settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    server_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("DSTACK_SERVER_DIR", Path.home() / ".dstack" / "server"))
    )
    database_url: str | None = field(default_factory=lambda: os.environ.get("DSTACK_DATABASE_URL"))
    admin_token: str | None = field(default_factory=lambda: os.environ.get("DSTACK_SERVER_ADMIN_TOKEN"))
    # An agent that has not heartbeated for this long is considered lost.
    heartbeat_timeout: float = field(default_factory=lambda: _float("DSTACK_HEARTBEAT_TIMEOUT", 30))
    heartbeat_interval: float = field(default_factory=lambda: _float("DSTACK_HEARTBEAT_INTERVAL", 2))
    # How long a stopped job gets between SIGTERM and SIGKILL.
    # How often the agent samples CPU, memory and GPU use (`dstack metrics`, `utilization_policy`).
    metrics_interval: float = field(default_factory=lambda: _float("DSTACK_METRICS_INTERVAL", 10))
    # How long a launched instance may take to send its first heartbeat.
    provisioning_timeout: float = field(default_factory=lambda: _float("DSTACK_PROVISIONING_TIMEOUT", 600))
    worker_interval: float = field(default_factory=lambda: _float("DSTACK_WORKER_INTERVAL", 1))
    # How often orphaned cloud instances are looked for, and how old one must be to be reaped.
    reaper_interval: float = field(default_factory=lambda: _float("DSTACK_REAPER_INTERVAL", 60))
    reaper_grace: float = field(default_factory=lambda: _float("DSTACK_REAPER_GRACE", 600))
    # Who may create projects: "everyone" (any user) or "admins" (global admins only).
    project_creation: str = field(default_factory=lambda: os.environ.get("DSTACK_PROJECT_CREATION", "everyone"))
    # The unprivileged user local host jobs run as when the server runs as root.
    # Where a local job's sshd listens (`dstack attach`, `ssh RUN`): loopback unless users attach from
    # other machines (then an address they reach; logins are key-only, host keys pinned).
    local_ssh_host: str = field(default_factory=lambda: os.environ.get("DSTACK_LOCAL_SSH_HOST", "127.0.0.1"))
    local_job_user: str = field(default_factory=lambda: os.environ.get("DSTACK_LOCAL_JOB_USER", "nobody"))
    # Where local jobs get their working directories. A root server runs jobs as an unprivileged
    # user, who must be able to reach them: so not inside the 0700 server directory.
    local_jobs_dir: Path = field(default_factory=lambda: Path(os.environ.get(
        "DSTACK_LOCAL_JOBS_DIR", "/var/lib/dstack/jobs" if os.geteuid() == 0 else Path.home() / ".dstack" / "jobs")))
    # How long a replica's claim on a job lasts without renewal; a dead replica's claims are
    # resolved by the others after it runs out.
    claim_lease: float = field(default_factory=lambda: _float("DSTACK_CLAIM_LEASE", 30))
    # The port this server listens on (set by `dstack server`): SSH fleet hosts' tunnels end there.
    listen_port: int | None = None

    def __post_init__(self) -> None:
        if self.project_creation not in ("everyone", "admins"):
            raise ValueError(f"DSTACK_PROJECT_CREATION must be `everyone` or `admins`, not {self.project_creation!r}")

    @property
    def private_paths(self) -> tuple[str, ...]:
        """What no job may see: the server's state, its user's HOME (CLI token, SSH and cloud keys)
        and the SQLite file wherever it lives."""
        paths = {str(self.server_dir.resolve()), str(Path.home().resolve())}
        if self.is_sqlite:
            paths.add(str(Path(self.db_url.split("///", 1)[1]).resolve().parent))
        return tuple(sorted(paths))

    @property
    def db_url(self) -> str:
        if self.database_url:
            url = self.database_url
            for plain in ("postgresql://", "postgres://"):
                if url.startswith(plain):
                    url = "postgresql+asyncpg://" + url[len(plain):]
            return url
        return f"sqlite+aiosqlite:///{self.server_dir / 'data' / 'sqlite.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

