"""What the services and workers share in one server process."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dstack.server.crypto import Encryptor, load_encryptor
from dstack.server.db import Database
from dstack.server.settings import Settings

if TYPE_CHECKING:
    from dstack.server.proxy import ServiceProxy


@dataclass
class ServerContext:
    settings: Settings
    db: Database
    encryptor: Encryptor = field(default=None)  # type: ignore[assignment]
    # Set on submit/stop so the workers react at once instead of at their next tick.
    scheduler_wake: asyncio.Event = field(default_factory=asyncio.Event)
    reconciler_wake: asyncio.Event = field(default_factory=asyncio.Event)
    fleets_wake: asyncio.Event = field(default_factory=asyncio.Event)
    volumes_wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Identifies this process when claiming jobs in a DB shared by replicas.
    replica_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    last_reap: float = 0.0
    # Bumped as a job's instance is released, once before and once after (see reconciler._terminate),
    # so that whatever saw the capacity free also sees the count changed; `capacity_seen` is the count
    # the scheduler last woke the jobs waiting for capacity at (see scheduler.schedule_once).
    capacity_freed: int = 0
    capacity_seen: int = 0
    # The jobs this process's scheduler is provisioning now: their claim is alive even when its
    # renewal came late (a loaded machine), so this process's reconciler leaves them alone.
    provisioning: set[str] = field(default_factory=set)
    proxy: ServiceProxy = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.encryptor is None:
            self.encryptor = load_encryptor(self.settings.server_dir)
        if self.proxy is None:
            from dstack.server.proxy import ServiceProxy

            self.proxy = ServiceProxy(self)
