"""An HTTP proxy in front of a stand-in (moto) that behaves the way the real service sometimes does
and the stand-in never does: transient 500s and connection resets, or an answer of the test's
choosing for requests it picks (EC2's `InvalidInstanceID.NotFound` right after RunInstances, say).

Requests are forwarded verbatim (method, path, headers, body), so signatures stay valid: the client
must address the proxy by the same host:port it signed for (tests give the proxy moto's port on the
VM side of a forwarder, or sign for the proxy's own address).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


# A rule sees each request: None forwards it; (status, body) answers it; "reset" drops the connection.
Rule = Callable[[Request], "tuple[int, bytes] | str | None"]


class FaultProxy:
    def __init__(self, target_port: int, rule: Rule | None = None,
                 transform: Callable[[Request, bytes], bytes] | None = None) -> None:
        self.target_port = target_port
        self.rule = rule
        # Rewrites a forwarded answer's body (e.g. CloudWatch's search lag hides fresh events); `normalize`
        # first, for what the stand-in always gets wrong (see stable_cloudwatch_event_ids).
        self.transform = transform
        self.normalize: Callable[[Request, bytes], bytes] | None = None
        self.faults = 0
        self.forwarded = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, dict(self.headers.items()), body)
                verdict = proxy.rule(request) if proxy.rule else None
                if verdict == "reset":
                    proxy.faults += 1
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if isinstance(verdict, tuple):
                    proxy.faults += 1
                    status, payload = verdict
                    self.send_response(status)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                proxy.forwarded += 1
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=120)
                try:
                    headers = {k: v for k, v in request.headers.items() if k.lower() != "connection"}
                    conn.request(request.method, request.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    if response.status == 200:
                        for transform in (proxy.normalize, proxy.transform):
                            if transform is not None:
                                payload = transform(request, payload)
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length", "server",
                                               "date"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def every_nth(n: int, verdict: tuple[int, bytes] | str, *, when: Callable[[Request], bool] = lambda r: True) -> Rule:
    """A fault for every n-th request that `when` selects (the others pass)."""
    counter = {"n": 0}
    lock = threading.Lock()

    def rule(request: Request) -> tuple[int, bytes] | str | None:
        if not when(request):
            return None
        with lock:
            counter["n"] += 1
            return verdict if counter["n"] % n == 0 else None

    return rule


S3_INTERNAL_ERROR = (500, b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                          b"<Message>We encountered an internal error. Please try again.</Message></Error>")


def s3_refuses_sigv2(request: Request) -> tuple[int, bytes] | None:
    """S3 refuses Signature Version 2 on buckets created after June 2020 and for SSE-KMS objects (S3
    docs, "Authenticating Requests (AWS Signature Version 2)"); moto accepts it. Presigned GETs carry
    it in the query, presigned POSTs as form fields, signed requests in the Authorization header."""
    auth = {k.lower(): v for k, v in request.headers.items()}.get("authorization", "")
    sigv2 = ("AWSAccessKeyId=" in request.path and "Signature=" in request.path) or auth.startswith("AWS ") \
        or (request.method == "POST" and b'name="AWSAccessKeyId"' in request.body)
    if not sigv2:
        return None
    return 400, (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidRequest</Code><Message>The '
                 b"authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
                 b"</Message></Error>")


def stable_cloudwatch_event_ids(request: Request, body: bytes) -> bytes:
    """moto numbers FilterLogEvents' events by their place in each answer ("0", "1", …); CloudWatch's
    event ids are unique and stable across queries (its API reference). Give them ids that are."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    if headers.get("x-amz-target") != "Logs_20140328.FilterLogEvents":
        return body
    page = json.loads(body)
    seen: dict[str, int] = {}
    for event in page.get("events", []):
        key = hashlib.sha1(f"{event.get('logStreamName')}/{event['timestamp']}/{event.get('ingestionTime')}/"
                           f"{event['message']}".encode(), usedforsecurity=False).hexdigest()[:20]
        seen[key] = seen.get(key, -1) + 1  # identical events at one instant: told apart by their order
        event["eventId"] = f"{key}{seen[key]}"
    return json.dumps(page).encode()


_SCOPE_RE = re.compile(r"(?:X-Amz-Credential=|Credential=|name=\"x-amz-credential\"\r\n\r\n)[^/&\s]+(?:/|%2F)\d{8}(?:/|%2F)"
                       r"([a-z0-9-]+)(?:/|%2F)s3", re.IGNORECASE)


def s3_checks_signing_region(bucket_region: Callable[[str], str | None]) -> Rule:
    """S3 refuses a SigV4 request signed for another region than the bucket's
    (`AuthorizationHeaderMalformed`, with the region it expects; the global endpoint redirects such a
    young bucket with a 307 instead); moto accepts any region."""

    def rule(request: Request) -> tuple[int, bytes] | None:
        text = request.path + " " + request.headers.get("Authorization", request.headers.get("authorization", ""))
        if request.method == "POST":
            text += " " + request.body[:4096].decode(errors="replace")
        match = _SCOPE_RE.search(text)
        bucket = request.path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        if not match or not bucket:
            return None
        expected = bucket_region(bucket)
        if expected is None or match.group(1) == expected:
            return None
        return 400, (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AuthorizationHeaderMalformed</Code>'
                     f"<Message>The authorization header is malformed; the region '{match.group(1)}' is wrong; "
                     f"expecting '{expected}'</Message><Region>{expected}</Region></Error>").encode()

    return rule
