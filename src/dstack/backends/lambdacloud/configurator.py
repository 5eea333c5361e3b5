"""Checks a Lambda backend config: the API key (and the regions it can use), then the AWS keys
and the bucket that store state and artifacts."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dstack.backends.aws.configurator import _bucket_region, bucket_error
from dstack.backends.aws.session import AUTH_ERRORS, DENIED_ERRORS, error_code
from dstack.backends.lambdacloud.api import DEFAULT_BASE_URL, LambdaAPI, LambdaAPIError
from dstack.backends.lambdacloud.models import LambdaBackendConfig
from dstack.core.backends import BackendCheck, FieldError
from dstack.core.errors import ConfigurationError

API_KEY_HELP = "create one in the Lambda Cloud dashboard: API keys → Generate API key"


def form_notes(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"title": "API key", "link": "https://cloud.lambda.ai/api-keys",
             "text": "Log into your Lambda Cloud account, click API keys in the sidebar, then Generate API key."},
            {"title": "Storage", "text": "Lambda Cloud has no object storage: give an S3 bucket and the access key "
                                        "of an IAM user allowed to use it (the s3 service)."}]


def check(config: LambdaBackendConfig) -> dict[str, Any]:
    result = check_form(config)
    if result.errors:
        raise ConfigurationError(result.errors[0].message, field=result.errors[0].field)
    return result.choices


def region_choices(api: LambdaAPI) -> list[str]:
    regions: set[str] = set()
    for item in api.instance_types().values():
        regions.update(r["name"] for r in item["regions_with_capacity_available"])
    from dstack.backends.lambdacloud.compute import KNOWN_REGIONS

    return sorted(regions | set(KNOWN_REGIONS))


def check_form(config: LambdaBackendConfig) -> BackendCheck:
    result = BackendCheck(ok=False)
    api = LambdaAPI(config.api_key, config.base_url, max_retries=2)
    try:
        result.choices["regions"] = region_choices(api)
    except LambdaAPIError as exc:
        if exc.code == "global/invalid-api-key":
            message = f"Lambda Cloud does not accept this API key; {API_KEY_HELP}"
        elif exc.code == "global/account-inactive":
            message = "the Lambda Cloud account of this API key is inactive"
        else:
            message = f"cannot check the API key: {exc}"
        result.errors.append(FieldError(field="api_key", message=message))
    else:
        unknown = [r for r in config.regions if r not in result.choices["regions"]]
        if unknown:
            result.errors.append(FieldError(field="regions", message=(
                f"unknown region{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: choose from "
                f"{', '.join(result.choices['regions'])}")))
    _check_storage(config, result)
    result.ok = not result.errors
    return result


def partial_check(config: dict[str, Any]) -> BackendCheck:
    """Before the form is complete: the API key (which fills Regions) and the AWS keys (Bucket)."""
    result = BackendCheck(ok=False, choices={"storage": ["aws"]})
    if config.get("api_key"):
        try:
            result.choices["regions"] = region_choices(
                LambdaAPI(config["api_key"], config.get("base_url") or DEFAULT_BASE_URL, max_retries=1))
        except LambdaAPIError as exc:
            if exc.code == "global/invalid-api-key":
                message = f"Lambda Cloud does not accept this API key; {API_KEY_HELP}"
            else:
                message = f"cannot check the API key: {exc}"
            result.errors.append(FieldError(field="api_key", message=message))
    if config.get("access_key_id") and config.get("secret_access_key"):
        probe = LambdaBackendConfig(api_key="x", regions=["x"], access_key_id=config["access_key_id"],
                                    secret_access_key=config["secret_access_key"],
                                    bucket=config.get("bucket") or "placeholder-bucket")
        _check_storage(probe, result, check_bucket=bool(config.get("bucket")))
    return result


# SigV4 on the bucket's regional endpoint, virtual-hosted: what S3 accepts for every bucket (SigV2
# is refused by buckets created after June 2020 and for SSE-KMS objects; the global endpoint answers
# 307 for a young bucket outside us-east-1, which the agent's POST would not follow).
_S3_CONFIG = Config(signature_version="s3v4", s3={"addressing_style": "virtual"},
                    retries={"max_attempts": 4, "mode": "standard"})


def s3_client(config: LambdaBackendConfig, region: str | None = None) -> Any:
    return boto3.client("s3", region_name=region or "us-east-1", aws_access_key_id=config.access_key_id,
                        aws_secret_access_key=config.secret_access_key, config=_S3_CONFIG)


def _check_storage(config: LambdaBackendConfig, result: BackendCheck, *, check_bucket: bool = True) -> None:
    s3 = s3_client(config)
    try:
        result.choices["bucket"] = sorted(b["Name"] for b in s3.list_buckets().get("Buckets", []))
    except ClientError as exc:
        code = error_code(exc)
        if code in AUTH_ERRORS:
            field = "secret_access_key" if code == "SignatureDoesNotMatch" else "access_key_id"
            message = ("the secret access key does not match the access key ID" if field == "secret_access_key"
                       else "AWS does not know this access key ID")
            result.errors.append(FieldError(field=field, message=message))
            return
        result.choices["bucket"] = None if code in DENIED_ERRORS else []
    except BotoCoreError as exc:
        result.errors.append(FieldError(field="access_key_id", message=f"cannot reach AWS: {exc}"))
        return
    if not check_bucket:
        return
    try:
        region = _bucket_region(s3.get_bucket_location(Bucket=config.bucket).get("LocationConstraint"))
        s3_client(config, region).list_objects_v2(Bucket=config.bucket, MaxKeys=1)
    except ClientError as exc:
        result.errors.append(bucket_error(config.bucket, exc, keys="AWS keys"))
