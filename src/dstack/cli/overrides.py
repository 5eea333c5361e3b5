"""`dstack apply` / `dstack offer` flags that override the configuration, as upstream's CLI has them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from dstack.core.errors import ConfigurationError


@dataclass
class Overrides:
    env: list[str] = field(default_factory=list)  # KEY=VALUE, or KEY (the value from this shell)
    name: str | None = None
    gpu: str | None = None
    cpu: str | None = None
    memory: str | None = None
    disk: str | None = None
    backends: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    instance_types: list[str] = field(default_factory=list)
    max_price: float | None = None
    max_duration: str | None = None
    spot_policy: str | None = None
    retry: bool | None = None
    retry_duration: str | None = None

    def apply(self, conf: Any) -> Any:
        """A new configuration with the flags applied, validated as the file's fields are."""
        data = conf.model_dump(exclude_unset=True)
        data["type"] = conf.type
        if self.env:
            env = dict(conf.env)
            for item in self.env:
                key, sep, value = item.partition("=")
                if not sep and key not in os.environ:
                    raise ConfigurationError(f"-e {key}: give a value (-e {key}=VALUE) or export it in this shell",
                                             field="env")
                env[key] = value if sep else os.environ[key]
            data["env"] = env
        resources = dict(data.get("resources") or {})
        for key in ("gpu", "cpu", "memory", "disk"):
            if getattr(self, key) is not None:
                resources[key] = getattr(self, key)
        if resources:
            data["resources"] = resources
        for key in ("name", "max_price", "max_duration", "spot_policy"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        for key in ("backends", "regions", "instance_types"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        if self.retry is False:
            data["retry"] = False
        elif self.retry or self.retry_duration:
            data["retry"] = {"duration": self.retry_duration} if self.retry_duration else True
        try:
            return type(conf).model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            path = ".".join(str(p) for p in err["loc"])
            raise ConfigurationError(f"{path}: {err['msg'].removeprefix('Value error, ')} (from the command line)",
                                     field=path) from None


def spot_policy_of(*, spot: bool, on_demand: bool, spot_auto: bool, spot_policy: str | None) -> str | None:
    chosen = [p for p, flag in (("spot", spot), ("on-demand", on_demand), ("auto", spot_auto)) if flag]
    if spot_policy:
        chosen.append(spot_policy)
    if len(set(chosen)) > 1:
        raise ConfigurationError("give one of --spot, --on-demand, --spot-auto, --spot-policy", field="spot_policy")
    return chosen[0] if chosen else None
