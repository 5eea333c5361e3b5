"""Fleets as the API shows them: the spec a client applies, the fleet and its instances."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from dstack.core.base import CoreModel
from dstack.core.infra_configurations import FleetConfiguration
from dstack.core.resources import InstanceResources
from dstack.core.runs import Offer

# A cloud fleet's instances are kept this long without work unless `idle_duration` says otherwise
# (upstream's default for fleets).
DEFAULT_FLEET_IDLE_DURATION = 3 * 24 * 3600


class FleetStatus(StrEnum):
    ACTIVE = "active"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class InstanceStatus(StrEnum):
    PENDING = "pending"  # to be launched
    PROVISIONING = "provisioning"  # launched, its agent not heard from yet
    IDLE = "idle"
    BUSY = "busy"
    TERMINATING = "terminating"
    TERMINATED = "terminated"

    @property
    def finished(self) -> bool:
        return self == InstanceStatus.TERMINATED


class FleetSpec(CoreModel):
    configuration: FleetConfiguration
    configuration_path: str = Field(default="fleet.dstack.yml", max_length=1000)
    configuration_text: str | None = Field(default=None, max_length=65536)


class Instance(CoreModel):
    name: str = Field(description="{fleet}-{num}")
    num: int
    status: InstanceStatus
    reason: str | None = None
    backend: str | None = None
    region: str | None = None
    instance_type: str | None = None
    resources: InstanceResources | None = None
    price: float | None = None
    spot: bool = False
    runs: list[str] = Field(default_factory=list, description="the runs it serves now")
    created_at: datetime
    idle_since: datetime | None = None
    finished_at: datetime | None = None


class Fleet(CoreModel):
    name: str
    project: str
    user: str
    status: FleetStatus
    created_at: datetime
    spec: FleetSpec
    instances: list[Instance] = Field(default_factory=list)


class FleetPlan(CoreModel):
    spec: FleetSpec
    project: str
    user: str
    nodes: int = Field(description="how many instances `apply` provisions now")
    offers: list[Offer]
    total_offers: int
    current: Fleet | None = Field(default=None, description="the active fleet of that name, if any")


def instance_name(fleet: str, num: int) -> str:
    return f"{fleet}-{num}"


def placement_group_name(fleet_id: str) -> str:
    """The placement group of a fleet with `placement: cluster` (where the backend has them)."""
    return f"dstack-{fleet_id}"
