"""boto3 sessions for a backend config, and an audit log of every AWS call the server makes.

Set DSTACK_AWS_AUDIT_LOG=/path/calls.jsonl to record each call (service, operation, region and
the resource-naming parameters, never secrets): useful to review what dstack does in an account,
and how the tests prove it stays within the least-privilege policy.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import boto3
from botocore.config import Config

from dstack.backends.aws.errors import AUTH_ERRORS, DENIED_ERRORS, describe, error_code  # noqa: F401 - re-exported
from dstack.backends.aws.models import AccessKeyCredentials, AWSBackendConfig
from dstack.core.errors import ConfigurationError

_AUDIT_KEYS = {
    "Bucket", "Key", "Prefix", "RoleName", "PolicyName", "PolicyArn", "InstanceProfileName", "logGroupName",
    "logStreamName", "logGroupNamePrefix", "Name", "SecretId", "InstanceIds", "IamInstanceProfile", "GroupName",
    "GroupId", "SubnetIds", "InstanceType", "TagSpecifications", "Filters", "MetadataOptions",
    "NetworkInterfaces", "VolumeId", "VolumeIds", "InstanceId", "Device", "DryRun", "AvailabilityZone",
    "Placement", "GroupNames", "Strategy", "CapacityReservationSpecification", "CapacityReservationIds",
}
_AUDIT_LOCK = threading.Lock()
_RETRIES = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=10, read_timeout=60)


def make_session(config: AWSBackendConfig) -> boto3.Session:
    creds = config.credentials
    if isinstance(creds, AccessKeyCredentials):
        return boto3.Session(aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
                             region_name=config.region)
    session = boto3.Session(region_name=config.region)
    if session.get_credentials() is None:
        raise ConfigurationError(
            "no default AWS credentials were found on the server's machine", field="credentials.type",
            fix="Set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile for the server, or use an Access key")
    return session


def client(session: boto3.Session, service: str, region: str) -> Any:
    result = session.client(service, region_name=region, config=_RETRIES)
    path = os.environ.get("DSTACK_AWS_AUDIT_LOG")
    if path:
        def _record(params: dict[str, Any], model: Any, **_: Any) -> None:
            entry = {"service": service, "operation": model.name, "region": region,
                     "params": {k: v for k, v in params.items() if k in _AUDIT_KEYS}}
            with _AUDIT_LOCK, open(path, "a") as f:
                f.write(json.dumps(entry, default=str) + "\n")

        result.meta.events.register("provide-client-params.*.*", _record)
    return result


class Clients:
    """Lazily created clients of one session (boto3 clients are thread-safe)."""

    def __init__(self, config: AWSBackendConfig) -> None:
        self._config = config
        self._session: Any = None
        self._made: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getattr__(self, service: str) -> Any:
        if service.startswith("_"):
            raise AttributeError(service)
        with self._lock:
            if service not in self._made:
                if self._session is None:
                    self._session = make_session(self._config)
                self._made[service] = client(self._session, service, self._config.region)
            return self._made[service]
