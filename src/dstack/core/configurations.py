"""The `.dstack.yml` configuration model and its parser.

`parse_configuration` turns YAML text into a typed configuration or raises a
`ConfigurationError` whose message names the file, the line and the field.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator

from dstack.core.errors import ConfigurationError
from dstack.core.resources import ResourcesSpec, StrictModel

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}\Z")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*\Z")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


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


class PortMapping(StrictModel):
    """`8080` (the same port locally), `8000:80` (local:container), `*:8080` (any free local port)."""

    local_port: int | None = Field(default=None, ge=1, le=65535)
    container_port: int = Field(ge=1, le=65535)
    any_local_port: bool = Field(default=False, description="`*:PORT`: a free local port is picked")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"container_port": value}
        if isinstance(value, str):
            local, sep, container = value.strip().partition(":")
            try:
                if not sep:
                    return {"container_port": int(local)}
                if local.strip() == "*":
                    return {"container_port": int(container), "any_local_port": True}
                return {"local_port": int(local), "container_port": int(container)}
            except ValueError:
                raise ValueError(f"expected a port such as 8080, 8000:80 or *:8080, got {value!r}") from None
        return value


RetryEvent = Literal["no-capacity", "interruption", "error"]


class RetrySpec(StrictModel):
    on_events: list[RetryEvent] = Field(default_factory=lambda: ["no-capacity", "interruption", "error"])
    duration: int | None = Field(default=3600, description="how long to keep retrying, e.g. 1h")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return {"on_events": [], "duration": None}
        return value

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int | None:
        return parse_duration(value)


class RegistryAuth(StrictModel):
    """Values may reference project secrets: `${{ secrets.NAME }}`."""

    username: str
    password: str = Field(repr=False)


# The versions `python` accepts (upstream's list): each has a default image (see docs/configuration.md).
PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")


class BaseRunConfiguration(StrictModel):
    name: str | None = Field(default=None, description="run name; generated when omitted")
    python: str | None = Field(default=None, description="Python version, e.g. '3.11'")
    image: str | None = Field(default=None, max_length=1000,
                              description="an OCI image to run the job in (Docker or Podman on the instance)")
    entrypoint: str | None = Field(default=None, description="the image's entrypoint, replaced")
    user: str | None = Field(default=None, description="the user (and group) the container runs as, e.g. 1000:1000")
    privileged: bool = Field(default=False, description="run the container privileged")
    shm_size: str | None = Field(default=None, description="the container's /dev/shm size, e.g. 8GB")
    registry_auth: RegistryAuth | None = Field(default=None, description="credentials of a private registry")
    env: dict[str, str | None] = Field(default_factory=dict, description="environment variables")
    working_dir: str | None = Field(
        default=None, description="with `image`: an absolute path in the container, or relative to the repo; "
                                  "without: relative to the repo")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    spot_policy: Literal["spot", "on-demand", "auto"] = Field(default="on-demand")
    max_price: float | None = Field(default=None, gt=0, description="max price per hour, USD")
    max_duration: int | None = Field(default=None, description="stop the run after this long: 2h, 1d, off")
    retry: RetrySpec | None = Field(default=None, description="resubmit on no-capacity/interruption/error")
    backends: list[str] | None = Field(default=None, description="only use these backends")
    regions: list[str] | None = Field(default=None, description="only use these regions")
    ports: list[PortMapping] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid run name: use 1-40 lowercase letters, digits and dashes, "
                "starting with a letter"
            )
        return value

    @field_validator("python", mode="before")
    @classmethod
    def _python(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, float):
            # YAML reads `python: 3.10` as the float 3.1: as upstream, 3.1 means 3.10.
            value = "3.10" if value == 3.1 else repr(value)
        value = str(value)
        if value not in PYTHON_VERSIONS:
            raise ValueError(f"expected a Python version among {', '.join(PYTHON_VERSIONS)}, got {value!r}")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if isinstance(value, list):
            parsed: dict[str, str | None] = {}
            for item in value:
                key, sep, val = str(item).partition("=")
                parsed[key] = val if sep else None
            value = parsed
        if isinstance(value, dict):
            for key, val in value.items():
                if not _ENV_NAME_RE.match(str(key)):
                    raise ValueError(f"{key!r} is not a valid environment variable name")
                if isinstance(val, bool | int | float):
                    value[key] = str(val).lower() if isinstance(val, bool) else str(val)
        return value

    @field_validator("max_duration", mode="before")
    @classmethod
    def _max_duration(cls, value: Any) -> int | None:
        return parse_duration(value)

    @model_validator(mode="after")
    def _working_dir(self) -> BaseRunConfiguration:
        wd = self.working_dir
        if wd is not None and not self.image and (wd.startswith("/") or ".." in wd.split("/")):
            raise ValueError(f"working_dir: {wd!r} must be relative to the repo (an absolute path is a path in "
                             "the container, so it needs `image`)")
        return self

    @model_validator(mode="after")
    def _python_or_image(self) -> BaseRunConfiguration:
        if self.python and self.image:
            raise ValueError("give either `python` or `image`, not both")
        return self


def _commands_are_strings(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                raise ValueError("a command was read as a mapping because it contains `: `; "
                                 "quote the whole command, e.g. - 'echo \"a: b\"'")
    return value


class TaskConfiguration(BaseRunConfiguration):
    type: Literal["task"]
    commands: list[str] = Field(default_factory=list, validate_default=True,
                                description="shell commands to run, in order (with `image`: may be omitted "
                                            "to run the image's own entrypoint and cmd)")
    artifacts: list[str] = Field(default_factory=list, description="paths saved to the bucket at the end")

    _check_commands = field_validator("commands", mode="before")(classmethod(lambda cls, v: _commands_are_strings(v)))

    @field_validator("commands", mode="after")
    @classmethod
    def _commands_or_image(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value and not info.data.get("image"):
            raise ValueError("this field is required: give at least one command (or an `image` whose own "
                             "command runs)")
        return value

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, value: list[str]) -> list[str]:
        for path in value:
            if path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"artifact path {path!r} must be relative to the working directory")
        return value


class DevEnvironmentConfiguration(BaseRunConfiguration):
    type: Literal["dev-environment"]
    # As upstream: the IDE whose link `dstack apply` prints; none means SSH only.
    ide: Literal["vscode", "cursor", "windsurf"] | None = None
    init: list[str] = Field(default_factory=list, description="commands to run before the IDE attaches")


AnyRunConfiguration = Annotated[
    TaskConfiguration | DevEnvironmentConfiguration, Field(discriminator="type")
]
_ADAPTER: TypeAdapter[TaskConfiguration | DevEnvironmentConfiguration] = TypeAdapter(AnyRunConfiguration)
_TYPES = ("task", "dev-environment")


def configuration_json_schema() -> dict[str, Any]:
    schema = _ADAPTER.json_schema()
    schema["title"] = "dstack configuration (.dstack.yml)"
    return schema


def parse_configuration(text: str, filename: str = ".dstack.yml") -> TaskConfiguration | DevEnvironmentConfiguration:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigurationError(f"{where}: invalid YAML: {problem}", fix="Fix the syntax on that line") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{filename}: expected a mapping with `type: task` or `type: dev-environment`")
    if data.get("type") not in _TYPES:
        line = _line_of(node, ("type",))
        raise ConfigurationError(
            f"{filename}:{line}: type: expected one of {', '.join(_TYPES)}, got {data.get('type')!r}",
            field="type",
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _to_configuration_error(exc, node, filename, data) from None


def _to_configuration_error(
    exc: ValidationError, node: yaml.Node | None, filename: str, data: dict[str, Any]
) -> ConfigurationError:
    lines = []
    first_field = None
    for err in exc.errors():
        # Drop the discriminator tag pydantic inserts (e.g. 'task') and validator names.
        loc = [p for p in err["loc"] if p not in _TYPES and not (isinstance(p, str) and "[" in p)]
        field = ".".join(str(p) for p in loc)
        first_field = first_field or field
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = _unknown_field_message(loc, data)
        elif err["type"] == "missing":
            message = "this field is required"
        line = _line_of(node, tuple(loc))
        lines.append(f"{filename}:{line}: {field or '(top level)'}: {message}")
    return ConfigurationError("; ".join(lines), field=first_field)


def _unknown_field_message(loc: list[Any], data: dict[str, Any]) -> str:
    from dstack.core.configurations import DevEnvironmentConfiguration, TaskConfiguration  # noqa: PLC0415

    model = TaskConfiguration if data.get("type") == "task" else DevEnvironmentConfiguration
    known: list[str] = list(model.model_fields)
    if len(loc) == 2 and loc[0] == "resources":
        known = list(ResourcesSpec.model_fields)
    name = str(loc[-1])
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean `{close[0]}`?" if close else f"known fields: {', '.join(known)}"
    return f"unknown field `{name}`: {hint}"


def _line_of(node: yaml.Node | None, path: tuple[Any, ...]) -> int:
    """Line (1-based) of the deepest YAML node along `path`."""
    if node is None:
        return 1
    current = node
    for key in path:
        nxt = None
        if isinstance(current, yaml.MappingNode):
            for k, v in current.value:
                if k.value == str(key):
                    nxt = v if key != path[-1] else k
                    break
        elif isinstance(current, yaml.SequenceNode) and isinstance(key, int) and key < len(current.value):
            nxt = current.value[key]
        if nxt is None:
            break
        current = nxt
    return current.start_mark.line + 1


_SECRET_REF = re.compile(r"\$\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def interpolate_secrets(value: str, secrets: dict[str, str], field: str) -> str:
    """`${{ secrets.NAME }}` replaced by the project secret NAME (a missing one is an error naming it)."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in secrets:
            from dstack.core.errors import ConfigurationError

            raise ConfigurationError(f"{field}: the project has no secret {name!r}", field=field,
                                     fix=f"Set it with `dstack secrets set {name}`")
        return secrets[name]

    return _SECRET_REF.sub(lookup, value)
