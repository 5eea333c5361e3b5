from __future__ import annotations

from typing import Any

from dstack.backends.ssh.models import SSHFleetConfig
from dstack.core.backends import BackendCheck


def check(config: SSHFleetConfig) -> dict[str, Any]:
    """Nothing to check: each SSH fleet's hosts are checked when the fleet is applied."""
    return {}


def check_form(config: SSHFleetConfig) -> BackendCheck:
    return BackendCheck(ok=True)
