"""The bucket in S3 for agents: the standard library only (see sigv4.py), credentials from the
instance role. The server uses S3Storage (boto3) with the backend's credentials instead."""

from __future__ import annotations

import builtins
import os
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from dstack.storage.base import Storage
from dstack.storage.sigv4 import UNSIGNED, AWSClient, AWSError, s3_bucket_url

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class StdlibS3Storage(Storage):
    def __init__(self, bucket: str, region: str) -> None:
        self.bucket = bucket
        self.region = region
        self.url = f"s3://{bucket}?region={region}"
        self._client = AWSClient("s3", region)
        self._base = s3_bucket_url(bucket, region)

    def _url(self, key: str, query: dict | None = None) -> str:
        url = f"{self._base}/{urllib.parse.quote(key, safe='/-_.~')}"
        return f"{url}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}" if query else url

    def put(self, key: str, data: bytes) -> None:
        self._client.request("PUT", self._url(key), body=data,
                             headers={"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"})

    def put_file(self, key: str, path: str) -> None:
        with open(path, "rb") as f:
            self._client.request("PUT", self._url(key), body=f, payload_hash=UNSIGNED,
                                 headers={"Content-Length": str(os.fstat(f.fileno()).st_size),
                                          "Content-Type": "application/octet-stream"})

    def get(self, key: str) -> bytes | None:
        try:
            return self._client.request("GET", self._url(key))[2]
        except AWSError as exc:
            if exc.status == 404:
                return None
            raise

    def size(self, key: str) -> int | None:
        try:
            _, headers, _ = self._client.request("HEAD", self._url(key))
        except AWSError as exc:
            if exc.status == 404:
                return None
            raise
        return int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))

    def delete(self, key: str) -> None:
        self._client.request("DELETE", self._url(key))

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> builtins.list[str]:
        keys: list[str] = []
        query: dict[str, Any] = {"list-type": "2", "prefix": prefix}
        if start_after:
            query["start-after"] = start_after
        while True:
            if limit is not None:
                query["max-keys"] = str(min(1000, limit - len(keys)))
            listing = urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote)
            _, _, data = self._client.request("GET", f"{self._base}/?{listing}")
            root = ET.fromstring(data)
            keys.extend(e.findtext(f"{_NS}Key") or "" for e in root.findall(f"{_NS}Contents"))
            token = root.findtext(f"{_NS}NextContinuationToken")
            if root.findtext(f"{_NS}IsTruncated") != "true" or not token or (limit is not None and len(keys) >= limit):
                return keys
            query["continuation-token"] = token
            query.pop("start-after", None)

    def open_read(self, key: str) -> Iterator[bytes]:
        data = self.get(key)
        if data is not None:
            yield data
