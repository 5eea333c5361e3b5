"""Cluster placement groups for fleets with `placement: cluster`: created (tagged with the bucket)
when the fleet's first instance is launched, deleted when the fleet is gone. Their EC2 actions are
the optional `clusters` statement (iam_policy.OPTIONAL_ACTIONS)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from dstack.backends.aws.errors import describe, error_code
from dstack.backends.base import LaunchError
from dstack.core.errors import BackendError


def ensure_group(ec2: Any, *, name: str, tags: list[dict[str, str]]) -> None:
    try:
        ec2.describe_placement_groups(GroupNames=[name])
        return
    except ClientError as exc:
        if error_code(exc) not in ("InvalidPlacementGroup.Unknown", "InvalidGroup.NotFound"):
            raise LaunchError(f"cannot read placement group {name}: {describe(exc)}", backend_wide=True) from exc
    try:
        ec2.create_placement_group(GroupName=name, Strategy="cluster",
                                   TagSpecifications=[{"ResourceType": "placement-group", "Tags": tags}])
    except ClientError as exc:
        if error_code(exc) != "InvalidPlacementGroup.Duplicate":  # a parallel launch made it
            raise LaunchError(f"cannot create placement group {name}: {describe(exc)}", backend_wide=True) from exc


def delete_group(ec2: Any, *, name: str) -> None:
    """Raises BackendError while instances still use it (tried again later)."""
    try:
        ec2.delete_placement_group(GroupName=name)
    except ClientError as exc:
        if error_code(exc) in ("InvalidPlacementGroup.Unknown", "InvalidGroup.NotFound"):
            return
        raise BackendError(f"cannot delete placement group {name}: {describe(exc)}") from exc
    except BotoCoreError as exc:
        raise BackendError(f"cannot delete placement group {name}: {exc}") from exc
