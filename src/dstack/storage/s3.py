"""A bucket in S3. Used by the server (with the backend's credentials) and by agents on
instances (with their instance role, or scoped credentials)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from dstack.storage.base import Storage

_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Storage(Storage):
    def __init__(self, bucket: str, region: str, *, client: Any | None = None) -> None:
        self.bucket = bucket
        self.region = region
        self.url = f"s3://{bucket}?region={region}"
        if client is None:
            import boto3

            client = boto3.client("s3", region_name=region)
        self._s3 = client

    def put(self, key: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def put_file(self, key: str, path: str) -> None:
        self._s3.upload_file(path, self.bucket, key)

    def get(self, key: str) -> bytes | None:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in _MISSING:
                return None
            raise

    def size(self, key: str) -> int | None:
        try:
            return int(self._s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if exc.response["Error"]["Code"] in _MISSING:
                return None
            raise

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> list[str]:
        keys: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            if limit is not None:
                kwargs["MaxKeys"] = min(1000, limit - len(keys))
            page = self._s3.list_objects_v2(**kwargs)
            keys.extend(item["Key"] for item in page.get("Contents", []))
            if not page.get("IsTruncated") or (limit is not None and len(keys) >= limit):
                return keys
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
            kwargs.pop("StartAfter", None)

    def open_read(self, key: str) -> Iterator[bytes]:
        body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        yield from body.iter_chunks(1 << 20)
