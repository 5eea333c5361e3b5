from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlparse

from dstack.storage.base import Storage


def storage_from_url(url: str) -> Storage:
    """`file:///path` -> a directory; `s3://bucket?region=R` -> S3 with the default credentials."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from dstack.storage.local import DirectoryStorage

        return DirectoryStorage(unquote(parsed.path))
    if parsed.scheme == "s3":
        # Agents: the standard library only (stock images have no boto3).
        from dstack.storage.s3_stdlib import StdlibS3Storage

        region = parse_qs(parsed.query).get("region", ["us-east-1"])[0]
        return StdlibS3Storage(parsed.netloc, region)
    if parsed.scheme == "tunnel":
        from dstack.storage.tunnel import TunnelStorage

        token_file = parse_qs(parsed.query).get("token_file", [""])[0]
        return TunnelStorage(unquote(parsed.path), token_file)
    if parsed.scheme == "presigned":
        from dstack.storage.presigned import PresignedStorage

        return PresignedStorage(unquote(parsed.netloc + parsed.path))
    raise ValueError(f"unsupported storage URL {url!r}")
