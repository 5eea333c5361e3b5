"""What the agent asks of its cloud: secrets and its own termination (through the instance role),
with the standard library's AWS client (stock images have no boto3), imported only on AWS: a local
job's agent would pay for http.client, ssl and email at every start (about 15 ms)."""

from __future__ import annotations

import sys
from typing import Any


def fetch_secrets(source: dict[str, Any]) -> dict[str, str]:
    if source.get("type") != "aws":
        return {}
    from dstack.storage.sigv4 import AWSClient

    client = AWSClient("secretsmanager", source["region"])
    return {name: client.json_call("secretsmanager.GetSecretValue", {"SecretId": secret_id})["SecretString"]
            for name, secret_id in source.get("ids", {}).items()}


def terminate_own_instance(terminate: dict[str, Any], instance_id: str) -> None:
    if terminate.get("type") != "aws":
        return
    from dstack.storage.sigv4 import AWSClient

    try:
        AWSClient("ec2", terminate["region"]).query_call(
            {"Action": "TerminateInstances", "Version": "2016-11-15", "InstanceId.1": instance_id})
    except Exception as exc:  # the server terminates it anyway; say why this did not
        print(f"dstack agent: could not terminate instance {instance_id}: {exc}", file=sys.stderr)
