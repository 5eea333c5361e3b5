"""`type: service` as upstream documents it: parsed now; its runtime comes with the services issue
(until then `dstack apply` refuses it with "not supported yet")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dstack.core.configurations import BaseRunConfiguration, PortMapping, _commands_are_strings, _port
from dstack.core.profiles import parse_duration
from dstack.core.resources import IntRange, StrictModel


class ScalingSpec(StrictModel):
    metric: Literal["rps"] = Field(description="requests per second per replica")
    target: float = Field(gt=0)
    scale_up_delay: int = 300
    scale_down_delay: int = 600

    @field_validator("scale_up_delay", "scale_down_delay", mode="before")
    @classmethod
    def _delay(cls, value: Any) -> int:
        return parse_duration(value) or 0


class ChatModel(StrictModel):
    type: Literal["chat"] = "chat"
    name: str
    format: Literal["openai", "tgi"] = "openai"
    prefix: str = "/v1"

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class RateLimit(StrictModel):
    prefix: str = "/"
    key: dict[str, str] | None = None
    rps: float = Field(gt=0)
    burst: int = Field(default=0, ge=0)


class Probe(StrictModel):
    type: Literal["http"] = "http"
    url: str = "/"
    method: Literal["get", "post", "put", "delete", "patch", "head"] = "get"
    headers: list[dict[str, str]] = Field(default_factory=list)
    body: str | None = None
    timeout: int = 10
    interval: int = 15
    ready_after: int = Field(default=1, ge=1)

    @field_validator("timeout", "interval", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> int:
        return parse_duration(value) or 1


class ServiceConfiguration(BaseRunConfiguration):
    type: Literal["service"]
    commands: list[str] = Field(default_factory=list)
    port: PortMapping = Field(description="the port the app listens on (or 80:8000)")
    gateway: bool | str | None = Field(default=None, description="a gateway name, or false for the server's proxy")
    strip_prefix: bool = True
    model: ChatModel | None = None
    https: bool | Literal["auto"] = "auto"
    auth: bool = True
    replicas: IntRange = Field(default_factory=lambda: IntRange(min=1, max=1),
                               description="a number, or a range such as 0..4 with `scaling`")
    scaling: ScalingSpec | None = None
    rate_limits: list[RateLimit] = Field(default_factory=list)
    probes: list[Probe] = Field(default_factory=list)

    _check_commands = field_validator("commands", mode="before")(classmethod(lambda cls, v: _commands_are_strings(v)))

    @field_validator("port", mode="before")
    @classmethod
    def _service_port(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"local_port": 80, "container_port": _port(value)}
        return value

    @model_validator(mode="after")
    def _service(self) -> ServiceConfiguration:
        if not self.commands and not self.image:
            raise ValueError("give `commands` or an `image` whose own command runs")
        if self.replicas.max is None:
            raise ValueError("replicas: give the maximum number, e.g. 0..4")
        if self.replicas.min != self.replicas.max and self.scaling is None:
            raise ValueError("replicas is a range: give `scaling` (metric: rps, target: N)")
        if self.replicas.min == self.replicas.max and self.scaling is not None:
            raise ValueError("`scaling` needs `replicas` to be a range, e.g. 1..4")
        return self


