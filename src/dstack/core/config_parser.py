"""YAML text -> a typed configuration, or a `ConfigurationError` with one `file:line: field: message`
line per problem."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Union

import yaml
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from dstack.core.configurations import (
    RUN_TYPES,
    DevEnvironmentConfiguration,
    ServiceConfiguration,
    TaskConfiguration,
)
from dstack.core.errors import ConfigurationError
from dstack.core.infra_configurations import (
    INFRA_TYPES,
    FleetConfiguration,
    GatewayConfiguration,
    VolumeConfiguration,
)

AnyConfiguration = typing.Annotated[
    TaskConfiguration | DevEnvironmentConfiguration | ServiceConfiguration | FleetConfiguration
    | VolumeConfiguration | GatewayConfiguration,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyConfiguration)
_TYPES = RUN_TYPES + INFRA_TYPES
_MODELS: dict[str, type[BaseModel]] = {
    "task": TaskConfiguration, "dev-environment": DevEnvironmentConfiguration, "service": ServiceConfiguration,
    "fleet": FleetConfiguration, "volume": VolumeConfiguration, "gateway": GatewayConfiguration,
}


def configuration_json_schema() -> dict[str, Any]:
    from dstack.core.config_schema import with_short_forms  # noqa: PLC0415

    schema = with_short_forms(_ADAPTER.json_schema())
    schema["title"] = "dstack configuration (.dstack.yml)"
    return schema


def parse_configuration(text: str, filename: str = ".dstack.yml") -> Any:
    """Any configuration type; see `parse_run_configuration` for runs only."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # A problem found at the end of the file (an unclosed bracket or quote) is marked past its
        # last line: name the last line there is.
        last = max(1, len(text.splitlines()))
        where = f"{filename}:{min(mark.line + 1, last)}" if mark else filename
        problem = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None and start.line != getattr(mark, "line", None):
            problem += f" ({context} that starts on line {start.line + 1})"
        raise ConfigurationError(f"{where}: invalid YAML: {problem}", fix="Fix the syntax on that line") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{filename}: expected a mapping with `type: {' | '.join(_TYPES)}`")
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
    model = _MODELS[data["type"]]
    for err in exc.errors():
        # Drop the discriminator tag pydantic inserts (e.g. 'task') and union member names.
        loc = [p for p in err["loc"][1:] if not (isinstance(p, str) and ("[" in p or p in ("int", "str", "bool")))]
        field = ".".join(str(p) for p in loc)
        first_field = first_field or field
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = _unknown_field_message(model, loc)
        elif err["type"] == "missing":
            message = "this field is required"
        line = _line_of(node, tuple(loc))
        entry = f"{filename}:{line}: {field or '(top level)'}: {message}"
        if entry not in lines:
            lines.append(entry)
    return ConfigurationError("\n".join(lines), field=first_field)


def _unknown_field_message(model: type[BaseModel], loc: list[Any]) -> str:
    """Suggest a known field only when it is close and at the same level; else list that level's fields."""
    parent = _model_at(model, loc[:-1])
    name = str(loc[-1])
    if parent is None:
        return f"unknown field `{name}`"
    known = list(parent.model_fields)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    hint = f"did you mean `{close[0]}`?" if close else f"known fields here: {', '.join(known)}"
    return f"unknown field `{name}`: {hint}"


def _model_at(model: type[BaseModel], path: list[Any]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for key in path:
        if isinstance(key, int):
            continue
        if current is None or key not in current.model_fields:
            return None
        current = _model_in(current.model_fields[key].annotation)
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X | None`, `list[X]`, `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list, dict, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _line_of(node: yaml.Node | None, path: tuple[Any, ...]) -> int:
    """Line (1-based) of the deepest YAML node along `path`."""
    if node is None:
        return 1
    current = node
    for i, key in enumerate(path):
        nxt = None
        if isinstance(current, yaml.MappingNode):
            for k, v in current.value:
                if k.value == str(key):
                    nxt = v if i < len(path) - 1 else k
                    break
        elif isinstance(current, yaml.SequenceNode) and isinstance(key, int) and key < len(current.value):
            nxt = current.value[key]
        if nxt is None:
            break
        current = nxt
    return current.start_mark.line + 1
