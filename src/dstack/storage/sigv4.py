"""A small AWS client in the standard library: Signature Version 4, credentials from the
environment or the instance role (IMDSv2), retries with backoff.

The agent runs on stock cloud images with nothing but `python3` (no pip, no boto3): this is all it
needs of AWS — S3 objects, CloudWatch Logs' PutLogEvents, Secrets Manager's GetSecretValue and
EC2's TerminateInstances. Endpoints follow the AWS SDKs: regional, virtual-hosted S3, and
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` when set.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac
import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from typing import IO, Any

IMDS = "http://169.254.169.254"
UNSIGNED = "UNSIGNED-PAYLOAD"
# Tries of one call (backoff 0.25 s doubling to 8 s, jittered: ~20-40 s in all). The agent's calls
# are the job's lifeline (a write that still fails ends the job with "agent error"): with 6, the Lambda
# e2e test's faults (every 4th answer a 500, every 9th connection reset: about one try in three
# failing) once ended its job in a full suite run.
RETRIES = 10
_RETRY_STATUSES = {429, 500, 502, 503, 504}
_RETRY_CODES = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "SlowDown", "InternalError",
                "ServiceUnavailable", "RequestTimeout"}


class AWSError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.status = status
        self.code = code


class Credentials:
    """From the environment, else the instance role through IMDSv2 (refreshed before they expire)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[str, str, str | None, float] | None = None

    def get(self) -> tuple[str, str, str | None]:
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            return key, secret, os.environ.get("AWS_SESSION_TOKEN")
        with self._lock:
            if self._cached is None or self._cached[3] - time.time() < 300:
                self._cached = _instance_role_credentials()
            return self._cached[0], self._cached[1], self._cached[2]


# The agent's own metadata requests carry this firewall mark: on an instance whose job shares the
# host's network, only marked packets may reach the metadata service (agent/metadata_guard.py).
# Setting a mark needs CAP_NET_ADMIN, which a job's container does not have.
IMDS_MARK = 0x64737463
_SO_MARK = 36


class _MarkedConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with contextlib.suppress(OSError):  # not root: no mark, and no guard installed by it either
            sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, IMDS_MARK)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock


def _imds(method: str, path: str, headers: dict[str, str]) -> bytes:
    conn = _MarkedConnection(IMDS.split("//", 1)[1], timeout=5)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise urllib.error.HTTPError(IMDS + path, response.status, response.reason, response.headers, None)
        return body
    finally:
        conn.close()


def _instance_role_credentials() -> tuple[str, str, str | None, float]:
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        raise AWSError(0, "NoCredentials", "no AWS credentials in the environment and the metadata service is off")
    token = with_retries(lambda: _imds("PUT", "/latest/api/token",
                                       {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}).decode())
    headers = {"X-aws-ec2-metadata-token": token}
    base = "/latest/meta-data/iam/security-credentials/"
    role = with_retries(lambda: _imds("GET", base, headers).decode().split()[0])
    data = json.loads(with_retries(lambda: _imds("GET", base + role, headers)))
    expires = _dt.datetime.strptime(data["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    return data["AccessKeyId"], data["SecretAccessKey"], data.get("Token"), expires.timestamp()


def with_retries(call: Any, *, statuses: frozenset[int] | None = None) -> Any:
    """`call`, again after network failures (resets, timeouts, cut bodies) with backoff; an HTTP error
    too unless `statuses` names the retryable ones (throttling, 5xx) and it is not among them."""
    for attempt in range(RETRIES):
        try:
            return call()
        except urllib.error.HTTPError as exc:
            if (statuses is not None and exc.code not in statuses) or attempt == RETRIES - 1:
                raise
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            if attempt == RETRIES - 1:
                raise
        time.sleep(min(8.0, 0.25 * 2 ** attempt) * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")


def _quote(value: str, safe: str = "") -> str:
    return urllib.parse.quote(value, safe=safe + "-_.~")


def endpoint(service: str, region: str) -> str:
    override = os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL")
    if override:
        return override.rstrip("/")
    return f"https://{service}.{region}.amazonaws.com"


def s3_bucket_url(bucket: str, region: str) -> str:
    """Virtual-hosted addressing on AWS's regional endpoint; path style on a custom endpoint."""
    if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        return f"{endpoint('s3', region)}/{bucket}"
    return f"https://{bucket}.s3.{region}.amazonaws.com"


class AWSClient:
    def __init__(self, service: str, region: str, credentials: Credentials | None = None) -> None:
        self.service = service
        self.region = region
        self.credentials = credentials or Credentials()

    def request(self, method: str, url: str, *, body: bytes | IO[bytes] = b"",
                headers: dict[str, str] | None = None, payload_hash: str | None = None,
                ok_statuses: tuple[int, ...] = (200, 204, 206)) -> tuple[int, dict[str, str], bytes]:
        """Send a signed request, retrying throttling, 5xx and network errors with backoff."""
        last: Exception | None = None
        for attempt in range(RETRIES):
            if hasattr(body, "seek"):
                body.seek(0)  # type: ignore[union-attr]
            try:
                signed = self._sign(method, url, dict(headers or {}), body, payload_hash)
                req = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None,
                                             method=method, headers=signed)
                with urllib.request.urlopen(req, timeout=60) as resp:
                    return resp.status, dict(resp.headers.items()), resp.read()
            except urllib.error.HTTPError as exc:
                data = exc.read()
                if exc.code in ok_statuses:
                    return exc.code, dict(exc.headers.items()), data
                error = _error(exc.code, data)
                if exc.code not in _RETRY_STATUSES and error.code not in _RETRY_CODES:
                    raise error from None
                last = error
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # resets, cut bodies
                last = exc
            if attempt < RETRIES - 1:
                time.sleep(min(8.0, 0.25 * 2 ** attempt) * (0.5 + random.random() / 2))
        assert last is not None
        raise last

    def _sign(self, method: str, url: str, headers: dict[str, str], body: bytes | IO[bytes],
              payload_hash: str | None) -> dict[str, str]:
        key, secret, token = self.credentials.get()
        parsed = urllib.parse.urlsplit(url)
        now = _dt.datetime.now(_dt.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        if payload_hash is None:
            payload_hash = hashlib.sha256(body if isinstance(body, bytes) else b"").hexdigest()
        headers.update({"host": parsed.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash})
        if token:
            headers["x-amz-security-token"] = token
        canonical_headers = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
        signed_names = ";".join(sorted(canonical_headers))
        query = sorted(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        canonical = "\n".join([
            method,
            parsed.path or "/",
            "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query),
            "".join(f"{k}:{canonical_headers[k]}\n" for k in sorted(canonical_headers)),
            signed_names,
            payload_hash,
        ])
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        signing_key = f"AWS4{secret}".encode()
        for part in (day, self.region, self.service, "aws4_request"):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed_names}, "
                                    f"Signature={signature}")
        return headers

    def json_call(self, target: str, payload: dict[str, Any]) -> dict[str, Any]:
        """An action of a JSON-protocol service (CloudWatch Logs, Secrets Manager)."""
        _, _, data = self.request("POST", endpoint(self.service, self.region) + "/", body=json.dumps(payload).encode(),
                                  headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})
        return json.loads(data or b"{}")

    def query_call(self, params: dict[str, str]) -> bytes:
        """An action of a query-protocol service (EC2)."""
        body = urllib.parse.urlencode(params).encode()
        _, _, data = self.request("POST", endpoint(self.service, self.region) + "/", body=body,
                                  headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        return data


def _error(status: int, data: bytes) -> AWSError:
    text = data.decode("utf-8", "replace")
    try:
        body = json.loads(text)
        code = str(body.get("__type", body.get("code", "Error"))).rsplit("#", 1)[-1]
        return AWSError(status, code, str(body.get("message") or body.get("Message") or ""))
    except ValueError:
        pass
    try:
        root = ET.fromstring(text)
        code = next((e.text for e in root.iter() if e.tag.endswith("Code")), None)
        message = next((e.text for e in root.iter() if e.tag.endswith("Message")), None)
        return AWSError(status, code or str(status), message or "")
    except ET.ParseError:
        return AWSError(status, str(status), text[:200])
