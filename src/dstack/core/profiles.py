"""Where and how a run is provisioned (upstream's "profile" fields), shared by runs and fleets.

Durations, the retry and utilization policies, the cron schedule and tags, with upstream dstack's
defaults and validation.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dstack.core.resources import StrictModel

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*\Z")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# Upstream's backend names: a configuration written for upstream may name any of them; one that the
# project does not have plans to "no offers" with the reason, it is not a parse error.
BACKEND_TYPES = (
    "local", "aws", "lambda", "amddevcloud", "azure", "cloudrift", "cudo", "datacrunch", "digitalocean", "gcp",
    "hotaisle", "kubernetes", "nebius", "oci", "remote", "runpod", "tensordock", "vastai", "vultr",
)
_TAG_KEY_RE = re.compile(r"^[\w .:/=+\-@]{1,128}\Z")
_TAG_VALUE_RE = re.compile(r"^[\w .:/=+\-@]{0,256}\Z")


def parse_duration(value: Any) -> int | None:
    """`90`, `30s`, `15m`, `2h`, `1d`, `off` -> seconds (None for off)."""
    if value is None or value == "off" or value is False:
        return None
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m, 2h or 1d, or `off`")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"duration must be positive, got {value}")
        return value
    match = _DURATION_RE.match(str(value))
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"expected a duration such as 30m, 2h or 1d, or `off`, got {value!r}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def duration_text(seconds: int) -> str:
    """3600 -> "1h", 5400 -> "1h 30m", 300 -> "5m", 45 -> "45s"."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts) or "0s"


RetryEvent = Literal["no-capacity", "interruption", "error"]


class RetrySpec(StrictModel):
    on_events: list[RetryEvent] = Field(default_factory=lambda: ["no-capacity", "interruption", "error"],
                                        description="omitted: all of no-capacity, interruption, error")
    duration: int | None = Field(default=3600, description="how long to keep retrying, e.g. 1h")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return {"on_events": [], "duration": None}
        if isinstance(value, dict) and value.get("on_events") == []:
            raise ValueError("on_events: give at least one of no-capacity, interruption, error (or `retry: false`)")
        return value

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int | None:
        return parse_duration(value)


class UtilizationPolicy(StrictModel):
    """Stop the run when a GPU stays under `min_gpu_utilization` percent for a whole `time_window`."""

    min_gpu_utilization: int = Field(ge=0, le=100, description="percent, per GPU")
    time_window: int = Field(description="e.g. 30m or 1h; at least 5m")

    @field_validator("time_window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> int:
        seconds = parse_duration(value)
        if seconds is None or seconds < 300:
            raise ValueError(f"time_window must be at least 5m, got {value!r}")
        return seconds


class Schedule(StrictModel):
    """Cron expressions in UTC (upstream's syntax: day of week 0 is Monday, names jan-dec, mon-sun)."""

    cron: list[str] = Field(description="one cron expression or a list of them")

    @field_validator("cron", mode="before")
    @classmethod
    def _cron(cls, value: Any) -> Any:
        values = [value] if isinstance(value, str) else value
        if isinstance(values, list):
            if not values:
                raise ValueError("give at least one cron expression, e.g. \"15 23 * * *\"")
            for expression in values:
                cron_trigger(str(expression))
        return values

    def next_fire(self, after: Any) -> Any:
        """The earliest UTC time strictly after `after` at which one of the expressions fires."""
        from datetime import timedelta  # noqa: PLC0415

        times = [cron_trigger(c).get_next_fire_time(None, after + timedelta(seconds=1)) for c in self.cron]
        return min(t for t in times if t is not None)


def cron_trigger(expression: str) -> Any:
    from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415 - only where schedules are used

    try:
        return CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"{expression!r} is not a cron expression (minute hour day month weekday): {exc}") \
            from None


def validate_tags(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for key, val in value.items():
        if isinstance(val, bool | int | float):
            value[key] = str(val).lower() if isinstance(val, bool) else str(val)
            val = value[key]
        if not isinstance(key, str) or not _TAG_KEY_RE.match(key) or key.lower().startswith(("aws:", "dstack")):
            raise ValueError(f"tag key {key!r}: use 1-128 letters, digits, spaces and _ . : / = + - @, "
                             "not starting with aws: or dstack")
        if not isinstance(val, str) or not _TAG_VALUE_RE.match(val):
            raise ValueError(f"tag {key}: value {val!r}: use up to 256 letters, digits, spaces and _ . : / = + - @")
    return value


class ProfileParams(StrictModel):
    """Provisioning fields common to runs and fleets (upstream's ProfileParams)."""

    backends: list[str] | None = Field(default=None, description="only use these backends, e.g. [aws, lambda]")
    regions: list[str] | None = Field(default=None, description="only use these regions")
    availability_zones: list[str] | None = Field(default=None, description="only use these zones, e.g. [us-east-1a]")
    instance_types: list[str] | None = Field(default=None, description="only use these instance types")
    reservation: str | None = Field(default=None, description="an existing capacity reservation to use")
    spot_policy: Literal["spot", "on-demand", "auto"] = Field(default="on-demand")
    retry: RetrySpec | None = Field(default=None, description="resubmit on no-capacity/interruption/error")
    max_duration: int | None = Field(default=None, description="stop the run after this long: 2h, 1d, off")
    stop_duration: int | None = Field(default=300, description="how long a graceful stop may take: 5m, off")
    max_price: float | None = Field(default=None, gt=0, description="max price per hour, USD")
    creation_policy: Literal["reuse", "reuse-or-create"] | None = Field(
        default=None, description="reuse fleet instances only, or create when none fits (default)")
    idle_duration: int | None = Field(default=None, description="how long an idle instance is kept: 5m, 3d, "
                                                                "off (-1: kept until deleted)")
    utilization_policy: UtilizationPolicy | None = Field(default=None, description="stop underusing runs")
    startup_order: Literal["any", "master-first", "workers-first"] | None = None
    stop_criteria: Literal["all-done", "master-done"] | None = None
    schedule: Schedule | None = Field(default=None, description="start the run at these UTC cron times")
    fleets: list[str] | None = Field(default=None, description="the fleets whose instances may be reused")
    tags: dict[str, str] | None = Field(default=None, description="tags on the run and its cloud resources")

    @field_validator("backends", mode="before")
    @classmethod
    def _backends(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = [str(v).lower() for v in value]
            for name in value:
                if name not in BACKEND_TYPES:
                    raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKEND_TYPES)}")
        return value

    @field_validator("max_duration", "stop_duration", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> int | None:
        return parse_duration(value)

    @field_validator("idle_duration", mode="before")
    @classmethod
    def _idle_duration(cls, value: Any) -> int | None:
        return -1 if value in ("off", False, -1) else parse_duration(value)  # -1: kept until deleted

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return validate_tags(value)
