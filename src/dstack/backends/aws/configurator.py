"""Checks an AWS backend config against the account, field by field, and offers choices for
Region, Bucket and Subnet once the credentials work."""

from __future__ import annotations

import difflib
import functools
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from dstack.backends.aws import catalog
from dstack.backends.aws.models import AccessKeyCredentials, AWSBackendConfig
from dstack.backends.aws.session import AUTH_ERRORS, DENIED_ERRORS, client, describe, error_code, make_session
from dstack.core.backends import BackendCheck, FieldError
from dstack.core.errors import ConfigurationError


@functools.cache
def known_regions() -> list[str]:
    """Regions from botocore's bundled endpoint data (no call needed) and the price catalog."""
    names = set(boto3.Session().get_available_regions("ec2")) | set(catalog.regions())
    return sorted(names)


def form_notes(config: dict[str, Any]) -> list[dict[str, Any]]:
    from dstack.backends.aws.iam_policy import render, template

    bucket = str(config.get("bucket") or "").strip()
    return [{"title": "S3 bucket",
             "text": "dstack stores state and artifacts in this bucket. Make sure that the bucket is created in "
                     "the same region where you plan to provision infrastructure."},
            {"title": "IAM user", "link": "https://docs.aws.amazon.com/IAM/latest/UserGuide/id_users_create.html",
             "text": "Create an IAM user for dstack and grant it permissions on the s3, logs, secretsmanager, ec2 "
                     "and iam services (the policy below is the narrowest)."},
            {"title": "Access key",
             "link": "https://docs.aws.amazon.com/cli/latest/userguide/cli-authentication-user.html"
                     "#cli-authentication-user-get",
             "text": "To use an access key, create one for the IAM user and download the .csv file with its Access "
                     "key ID and Secret access key."},
            {"title": "IAM policy", "copy": True,
             "text": "Grant the IAM user this least-privilege policy"
                     + (f" (filled in for bucket {bucket})." if bucket else "; fill in Bucket to complete it."),
             "body": render(bucket) if bucket else template()}]


def check(config: AWSBackendConfig) -> dict[str, Any]:
    """On save: raise the first problem as a ConfigurationError naming its field."""
    result = check_form(config)
    if result.errors:
        first = result.errors[0]
        raise ConfigurationError(first.message, field=first.field)
    return result.choices


def check_form(config: AWSBackendConfig) -> BackendCheck:
    """As the form is filled: every problem found, by field, and the choices available."""
    result = BackendCheck(ok=False, choices={"region": known_regions()})
    if config.region not in known_regions():
        close = difflib.get_close_matches(config.region, known_regions(), n=3)
        hint = f": did you mean {' or '.join(close)}?" if close else ""
        result.errors.append(FieldError(field="region", message=f"unknown region {config.region!r}{hint}"))
        return result
    try:
        session = make_session(config)
    except ConfigurationError as exc:
        result.errors.append(FieldError(field=exc.field, message=str(exc)))
        return result
    s3 = client(session, "s3", config.region)
    if not _check_credentials(config, s3, result):
        return result
    _check_bucket(config, s3, result)
    _check_subnet(config, client(session, "ec2", config.region), result)
    result.ok = not result.errors
    return result


def partial_check(config: dict[str, Any]) -> BackendCheck:
    """What can be checked before the form is complete: the region, the credentials (which
    fill the Bucket choices), the subnets of the region."""
    result = BackendCheck(ok=False, choices={"region": known_regions()})
    region = str(config.get("region") or "")
    if region and region not in known_regions():
        close = difflib.get_close_matches(region, known_regions(), n=3)
        hint = f": did you mean {' or '.join(close)}?" if close else ""
        result.errors.append(FieldError(field="region", message=f"unknown region {region!r}{hint}"))
        return result
    creds = config.get("credentials") or {"type": "default"}
    if creds.get("type") == "access_key" and not (creds.get("access_key_id") and creds.get("secret_access_key")):
        return result
    try:
        probe = AWSBackendConfig(region=region or "us-east-1", bucket="placeholder-bucket", credentials=creds)
        session = make_session(probe)
    except (ConfigurationError, ValueError) as exc:
        result.errors.append(FieldError(field=getattr(exc, "field", None) or "credentials.type", message=str(exc)))
        return result
    if _check_credentials(probe, client(session, "s3", probe.region), result) and region:
        _check_subnet(probe, client(session, "ec2", region), result)
    return result


def _credential_field(config: AWSBackendConfig, code: str) -> str:
    if not isinstance(config.credentials, AccessKeyCredentials):
        return "credentials.type"
    return "credentials.secret_access_key" if code == "SignatureDoesNotMatch" else "credentials.access_key_id"


def _check_credentials(config: AWSBackendConfig, s3: Any, result: BackendCheck) -> bool:
    try:
        buckets = s3.list_buckets().get("Buckets", [])
        result.choices["bucket"] = sorted(b["Name"] for b in buckets)
        return True
    except ClientError as exc:
        code = error_code(exc)
        if code in AUTH_ERRORS:
            field = _credential_field(config, code)
            message = {
                "credentials.secret_access_key": "the secret access key does not match the access key ID",
                "credentials.access_key_id": "AWS does not know this access key ID",
            }.get(field, f"the default AWS credentials were refused ({code})")
            result.errors.append(FieldError(field=field, message=message))
            return False
        if code in DENIED_ERRORS:
            # No s3:ListAllMyBuckets: the bucket can still be typed in by hand.
            result.choices["bucket"] = None
            return True
        result.errors.append(FieldError(field="credentials.type", message=f"AWS answered {describe(exc)}"))
        return False
    except BotoCoreError as exc:
        result.errors.append(FieldError(field="credentials.type", message=f"cannot reach AWS: {exc}"))
        return False


def _bucket_region(location: str | None) -> str:
    if not location:
        return "us-east-1"
    return "eu-west-1" if location == "EU" else location


def bucket_error(bucket: str, exc: ClientError, keys: str = "credentials") -> FieldError:
    """What a failed bucket call means for the Bucket field."""
    code = error_code(exc)
    if code == "NoSuchBucket":
        message = f"bucket {bucket} does not exist"
    elif code in DENIED_ERRORS:
        message = f"bucket {bucket} is not readable with these {keys} ({code})"
    else:
        message = f"cannot check bucket {bucket}: {describe(exc)}"
    return FieldError(field="bucket", message=message)


def _check_bucket(config: AWSBackendConfig, s3: Any, result: BackendCheck) -> None:
    bucket = config.bucket
    try:
        region = _bucket_region(s3.get_bucket_location(Bucket=bucket).get("LocationConstraint"))
    except ClientError as exc:
        result.errors.append(bucket_error(bucket, exc))
        return
    if region != config.region:
        result.errors.append(FieldError(
            field="bucket", message=f"bucket {bucket} is in {region}, not {config.region}: "
            f"choose a bucket in {config.region}, or set Region to {region}"))
        return
    try:
        s3.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except ClientError as exc:
        result.errors.append(bucket_error(bucket, exc))


def _check_subnet(config: AWSBackendConfig, ec2: Any, result: BackendCheck) -> None:
    try:
        subnets = ec2.describe_subnets().get("Subnets", [])
    except ClientError as exc:
        result.choices["subnet"] = None
        if config.subnet:
            result.errors.append(FieldError(field="subnet", message=f"cannot list subnets: {describe(exc)}"))
        return
    def label(subnet: dict[str, Any]) -> str:
        name = next((t["Value"] for t in subnet.get("Tags") or [] if t.get("Key") == "Name"), None)
        public = ", public IPs" if subnet.get("MapPublicIpOnLaunch") else ""
        return (f"{name + ' · ' if name else ''}{subnet['SubnetId']} ({subnet['AvailabilityZone']}, "
                f"{subnet['CidrBlock']}{', default' if subnet.get('DefaultForAz') else ''}{public})")

    result.choices["subnet"] = [{"value": s["SubnetId"], "label": label(s)} for s in subnets]
    if config.subnet and config.subnet not in {s["SubnetId"] for s in subnets}:
        result.errors.append(FieldError(
            field="subnet", message=f"subnet {config.subnet} does not exist in {config.region}: "
            "give a subnet of that region, or leave Subnet empty for the default VPC"))
