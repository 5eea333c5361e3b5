"""Project secrets mirrored to Secrets Manager as /dstack/{bucket}/secrets/{project}/{name}, and
repo URLs' git credentials as /dstack/{bucket}/credentials/{project}/{url hash} (both paths in the
seed's IAM policy), where the instance role may read them. Values never pass through the bucket."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from dstack.backends.aws.session import error_code


def secret_id(bucket: str, project: str, name: str) -> str:
    if name.startswith("__dstack_repo_credentials:"):  # git credentials of a repo URL (by its hash)
        return f"/dstack/{bucket}/credentials/{project}/{name.split(':', 1)[1]}"
    return f"/dstack/{bucket}/secrets/{project}/{name}"


def sync(client: Any, *, bucket: str, project: str, secrets: dict[str, str]) -> dict[str, str]:
    """Create each secret, or write a new version where the value changed (never one per job: Secrets
    Manager has a version quota); returns name -> secret id for the job spec."""
    ids = {}
    for name, value in secrets.items():
        sid = secret_id(bucket, project, name)
        try:
            current = client.get_secret_value(SecretId=sid).get("SecretString")
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            client.create_secret(Name=sid, SecretString=value, Tags=[{"Key": "dstack_bucket", "Value": bucket}])
        else:
            if current != value:
                client.put_secret_value(SecretId=sid, SecretString=value)
        ids[name] = sid
    return ids


def delete(client: Any, *, bucket: str, project: str, name: str) -> None:
    """At once, without the recovery window (a deleted dstack secret must not stay billed)."""
    try:
        client.delete_secret(SecretId=secret_id(bucket, project, name), ForceDeleteWithoutRecovery=True)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
