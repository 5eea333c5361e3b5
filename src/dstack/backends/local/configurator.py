from __future__ import annotations

from typing import Any

from dstack.backends.local.models import LocalBackendConfig
from dstack.core.backends import BackendCheck


def check(config: LocalBackendConfig) -> dict[str, Any]:
    """Nothing to check with a cloud; no fields to offer choices for."""
    return {}


def check_form(config: LocalBackendConfig) -> BackendCheck:
    return BackendCheck(ok=True)
