from __future__ import annotations

from typing import Any

from dstack.backends.local.models import LocalBackendConfig


def validate_config(config: dict[str, Any]) -> LocalBackendConfig:
    """Nothing to check with a cloud: the model's own validation is all there is."""
    return LocalBackendConfig.model_validate(config)


def field_choices(config: dict[str, Any]) -> dict[str, list[str]]:
    return {}
