"""Project secrets mirrored to Secrets Manager as /dstack/{bucket}/secrets/{project}/{name},
where the instance role may read them. Values never pass through the bucket."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from dstack.backends.aws.session import error_code


def secret_id(bucket: str, project: str, name: str) -> str:
    return f"/dstack/{bucket}/secrets/{project}/{name}"


def sync(client: Any, *, bucket: str, project: str, secrets: dict[str, str]) -> dict[str, str]:
    """Create or update each secret; returns name -> secret id for the job spec."""
    ids = {}
    for name, value in secrets.items():
        sid = secret_id(bucket, project, name)
        try:
            client.put_secret_value(SecretId=sid, SecretString=value)
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            client.create_secret(Name=sid, SecretString=value, Tags=[{"Key": "dstack_bucket", "Value": bucket}])
        ids[name] = sid
    return ids
