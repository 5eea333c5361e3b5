"""The JSON schema of `.dstack.yml` for editors, with the short forms the parser accepts.

Pydantic's schema describes the parsed models (a GPU as an object, a duration as seconds); files are
written in upstream's short forms (`gpu: A100:2`, `max_duration: 2h`, `ports: ["8000:80"]`), which
the models' validators turn into those objects. This adds each short form where it is accepted, so
the schema validates what the parser accepts (a test checks every example in docs/ against it).
"""

from __future__ import annotations

from typing import Any

_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_NUM: dict[str, Any] = {"type": "number"}
_BOOL: dict[str, Any] = {"type": "boolean"}

# Models that also accept a scalar: `8000:80`, `2..8`, `24GB`, `A100:2`, `retry: true`, `..:/repo`.
_SHORT_MODELS: dict[str, list[dict[str, Any]]] = {
    "PortMapping": [_INT, _STR], "IntRange": [_INT, _STR], "FleetNodes": [_INT, _STR],
    "MemoryRange": [_NUM, _STR], "GPUSpec": [_INT, _STR], "DiskSpec": [_NUM, _STR], "RetrySpec": [_BOOL],
    "RepoSpec": [_STR], "FilePathMapping": [_STR], "VolumeMount": [_STR], "ChatModel": [_STR], "SSHHost": [_STR],
}
# Fields given as durations (`30m`, `2h`, `off`) or sizes (`16GB`) besides their parsed numbers.
_DURATIONS = {"max_duration", "stop_duration", "idle_duration", "inactivity_duration", "time_window", "duration",
              "scale_up_delay", "scale_down_delay", "timeout", "interval", "auto_cleanup_duration"}
_EXTRA_FIELD_FORMS: dict[str, list[dict[str, Any]]] = {
    "python": [_NUM], "compute_capability": [_STR], "shm_size": [_STR, _NUM],
    "cron": [_STR], "name": [_STR], "replicas": [_INT, _STR],
}
_CPU_MAPPING = {"type": "object", "additionalProperties": False,
                "properties": {"arch": {"enum": ["x86", "arm"]}, "count": {"type": ["integer", "string"]}}}


def with_short_forms(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.get("$defs", {})
    for name, forms in _SHORT_MODELS.items():
        if name in defs:
            defs[name] = {"anyOf": [defs[name], *forms]}
    for definition in defs.values():
        for model in definition.get("anyOf", [definition]):
            for field, prop in (model.get("properties") or {}).items():
                _widen(model["properties"], field, prop)
    return schema


def _widen(properties: dict[str, Any], field: str, prop: dict[str, Any]) -> None:
    extra: list[dict[str, Any]] = []
    if field in _DURATIONS:
        extra = [_STR, _BOOL]
    elif field in _EXTRA_FIELD_FORMS:
        extra = _EXTRA_FIELD_FORMS[field]
    elif field == "env":
        extra = [{"type": "array", "items": _STR}]
        prop["additionalProperties"] = {"type": ["string", "number", "boolean", "null"]}
    elif field == "tags":
        extra = [{"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}]
    elif field == "cpu":
        extra = [_CPU_MAPPING]
    if extra:
        properties[field] = {"anyOf": [prop, *extra], **{k: prop[k] for k in ("description", "default") if k in prop}}
