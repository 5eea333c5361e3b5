"""Network volumes as the API shows them: the spec a client applies and the volume."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from dstack.core.base import CoreModel
from dstack.core.infra_configurations import VolumeConfiguration


class VolumeStatus(StrEnum):
    SUBMITTED = "submitted"  # to be created (or looked up, for `volume_id`)
    PROVISIONING = "provisioning"  # the provider creates it
    ACTIVE = "active"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"


class VolumeSpec(CoreModel):
    configuration: VolumeConfiguration
    configuration_path: str = Field(default="volume.dstack.yml", max_length=1000)
    configuration_text: str | None = Field(default=None, max_length=65536)


class Volume(CoreModel):
    name: str
    project: str
    user: str
    backend: str
    region: str
    availability_zone: str | None = None
    size_gb: float | None = None
    volume_id: str | None = Field(default=None, description="the provider's id")
    external: bool = Field(default=False, description="registered by `volume_id`: deleting it only unregisters")
    status: VolumeStatus
    reason: str | None = None
    attached_to: list[str] = Field(default_factory=list, description="the runs it is attached to now")
    created_at: datetime
    spec: VolumeSpec


# The device names the server attaches block volumes as, in the run's `volumes` order.
BLOCK_DEVICE_NAMES = tuple(f"/dev/sd{letter}" for letter in "fghijklmnop")
