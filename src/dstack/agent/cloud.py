"""What the agent asks of its cloud: secrets and its own termination (through the instance role)."""

from __future__ import annotations

import sys
from typing import Any


def fetch_secrets(source: dict[str, Any]) -> dict[str, str]:
    if source.get("type") != "aws":
        return {}
    import boto3

    client = boto3.client("secretsmanager", region_name=source["region"])
    return {name: client.get_secret_value(SecretId=secret_id)["SecretString"]
            for name, secret_id in source.get("ids", {}).items()}


def terminate_own_instance(terminate: dict[str, Any], instance_id: str) -> None:
    if terminate.get("type") != "aws":
        return
    try:
        import boto3

        boto3.client("ec2", region_name=terminate["region"]).terminate_instances(InstanceIds=[instance_id])
    except Exception as exc:  # the server terminates it anyway; say why this did not
        print(f"dstack agent: could not terminate instance {instance_id}: {exc}", file=sys.stderr)
