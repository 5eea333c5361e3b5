"""Form descriptions generated from a backend's config model, so the web UI needs no code per
backend: field kinds come from the annotations, labels and help from titles and descriptions,
required marks from the model, secrets from SECRET_FIELDS, advanced fields from `advanced`."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dstack.server.services.backends import BACKEND_TYPES


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _strip(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without Annotated/None, whether None is allowed)."""
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) == 1:
            return _strip(args[0])[0], optional
        return args, optional
    return annotation, False


def describe_model(model: type[BaseModel], *, prefix: str = "", secrets: set[str] | None = None) -> list[dict]:
    secrets = secrets if secrets is not None else set(getattr(model, "SECRET_FIELDS", set()))
    return [describe_field(name, info, prefix=prefix, secrets=secrets) for name, info in model.model_fields.items()]


def describe_field(name: str, info: FieldInfo, *, prefix: str, secrets: set[str]) -> dict:
    path = f"{prefix}{name}"
    annotation, optional = _strip(info.annotation)
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    field: dict[str, Any] = {
        "path": path, "title": info.title or name.replace("_", " ").capitalize(),
        "description": info.description or "",
        "required": info.is_required() and not optional and extra.get("mark") != "optional",
        "labels": extra.get("labels") or {},
        "advanced": bool(extra.get("advanced")), "default": _default(info),
    }
    if isinstance(annotation, list) and all(_is_model(a) for a in annotation):
        # A discriminated union of models: a choice of `type`, each with its own fields.
        field["kind"] = "group"
        field["options"] = [{
            "value": a.model_fields["type"].default, "title": a.model_config.get("title") or a.__name__,
            "fields": [f for f in describe_model(a, prefix=f"{path}.", secrets=secrets)
                       if not f["path"].endswith(".type")],
        } for a in annotation]
    elif get_origin(annotation) is Literal:
        values = list(get_args(annotation))
        # A choice always has a value, so the form marks it required (as the user's docs do).
        field.update(kind="fixed" if name == "type" else "select", options=values, required=name != "type")
    elif get_origin(annotation) is list:
        field["kind"] = "multiselect"
    else:
        field["kind"] = "password" if path in secrets else "text"
    return field


def _default(info: FieldInfo) -> Any:
    if info.is_required():
        return None
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return None
        return value.model_dump() if isinstance(value, BaseModel) else value
    default = info.get_default()
    return None if default is ... else default


def backend_forms() -> list[dict]:
    forms = []
    for kind, backend in BACKEND_TYPES.items():
        model = backend.models.CONFIG_MODEL
        forms.append({"type": kind, "title": backend.title, "fields": describe_model(model),
                      "doc": (model.__doc__ or "").strip()})
    return forms
