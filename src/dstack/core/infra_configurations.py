"""`type: fleet`, `volume` and `gateway` configurations, parsed as upstream dstack documents them.

Their runtime (creating fleets, volumes and gateways) comes with the fleets and services issues;
until then `dstack apply` refuses them with "not supported yet" after parsing them fully, so that a
file written for upstream gets its typos and bad values reported now.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dstack.core.profiles import RetrySpec, parse_duration, validate_tags
from dstack.core.resources import IntRange, MemoryRange, ResourcesSpec, StrictModel

_RESOURCE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}\Z")


def _resource_name(value: str | None) -> str | None:
    if value is not None and not _RESOURCE_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid name: use 1-40 lowercase letters, digits and dashes, "
                         "starting with a letter")
    return value


class SSHKey(StrictModel):
    """A private key's content: the CLI reads `identity_file` and sends it (as upstream); the server
    keeps it encrypted and never shows it back."""

    public: str | None = None
    private: str = Field(max_length=16384)


class ProxyJump(StrictModel):
    hostname: str
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    ssh_key: SSHKey | None = None


class SSHHost(StrictModel):
    hostname: str
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    proxy_jump: ProxyJump | None = None
    internal_ip: str | None = None
    blocks: int | Literal["auto"] = 1
    ssh_key: SSHKey | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        return {"hostname": value} if isinstance(value, str) else value


class SSHConfig(StrictModel):
    """An SSH fleet: the team's own hosts."""

    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: str | None = None
    proxy_jump: ProxyJump | None = None
    hosts: list[SSHHost] = Field(min_length=1)
    network: str | None = Field(default=None, description="the hosts' private network, e.g. 10.0.0.0/24")
    ssh_key: SSHKey | None = None


class _NamedResource(StrictModel):
    """A fleet, volume or gateway: an optional name and tags (on its cloud resources)."""

    name: str | None = None
    tags: dict[str, str] | None = None

    _name = field_validator("name")(classmethod(lambda cls, v: _resource_name(v)))
    _tags = field_validator("tags", mode="before")(classmethod(lambda cls, v: validate_tags(v)))


class FleetNodes(IntRange):
    target: int | None = Field(default=None, ge=0)


class FleetConfiguration(_NamedResource):
    type: Literal["fleet"]
    nodes: FleetNodes | None = Field(default=None, description="a number or a range such as 0..2")
    placement: Literal["any", "cluster"] | None = None
    reservation: str | None = None
    resources: ResourcesSpec | None = None
    blocks: int | Literal["auto"] = 1
    env: dict[str, str] | list[str] = Field(default_factory=dict)
    ssh_config: SSHConfig | None = None
    backends: list[str] | None = None
    regions: list[str] | None = None
    availability_zones: list[str] | None = None
    instance_types: list[str] | None = None
    spot_policy: Literal["spot", "on-demand", "auto"] | None = None
    retry: RetrySpec | None = None
    max_price: float | None = Field(default=None, gt=0)
    idle_duration: int | None = None

    @field_validator("idle_duration", mode="before")
    @classmethod
    def _idle(cls, value: Any) -> int | None:
        return -1 if value in ("off", False, -1) else parse_duration(value)

    @model_validator(mode="after")
    def _cloud_or_ssh(self) -> FleetConfiguration:
        if self.ssh_config is None and self.nodes is None:
            raise ValueError("give `nodes` (a cloud fleet) or `ssh_config` (your own hosts)")
        if self.ssh_config is not None and self.nodes is not None:
            raise ValueError("`nodes` is for cloud fleets; an SSH fleet has its `ssh_config.hosts`")
        return self


class VolumeConfiguration(_NamedResource):
    type: Literal["volume"]
    backend: str
    region: str
    availability_zone: str | None = None
    size: MemoryRange | None = Field(default=None, description="e.g. 100GB; not with volume_id")
    volume_id: str | None = Field(default=None, description="an existing volume to register")
    auto_cleanup_duration: int | None = None

    @field_validator("auto_cleanup_duration", mode="before")
    @classmethod
    def _cleanup(cls, value: Any) -> int | None:
        return parse_duration(value)

    @model_validator(mode="after")
    def _size_or_id(self) -> VolumeConfiguration:
        if self.size is not None and self.volume_id is not None:
            raise ValueError("give `size` (a new volume) or `volume_id` (an existing one), not both")
        # Lambda's file systems have no size (they grow as they fill).
        if self.size is None and self.volume_id is None and self.backend != "lambda":
            raise ValueError("give `size` (a new volume) or `volume_id` (an existing one)")
        return self


class Certificate(StrictModel):
    type: Literal["lets-encrypt", "acm"]
    arn: str | None = None


class GatewayConfiguration(_NamedResource):
    type: Literal["gateway"]
    default: bool = False
    backend: str
    region: str
    instance_type: str | None = None
    router: dict[str, Any] | None = None
    domain: str | None = None
    public_ip: bool = True
    certificate: Certificate | None = Field(default_factory=lambda: Certificate(type="lets-encrypt"))


INFRA_TYPES = ("fleet", "volume", "gateway")
_FEATURE = {"fleet": "fleets", "volume": "volumes", "gateway": "gateways"}


def infra_not_supported(conf: Any) -> list[str]:
    return [f"`type: {conf.type}` ({_FEATURE[conf.type]})"]
