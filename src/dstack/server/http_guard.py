"""What every HTTP response and request goes through: security headers, body size limits and
characters no handler should ever see.

Pure ASGI (no BaseHTTPMiddleware): streaming responses (logs, artifacts) pass through untouched.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Documented limits (docs/server.md): 413 names the limit that was passed.
MAX_JSON_BODY = 1 * 2**20
MAX_CODE_BODY = 128 * 2**20
# Code archives, and objects SSH fleet agents put in the bucket (log chunks, artifacts).
_CODE_PATH = re.compile(r"^(/api/projects/[^/]+/code/[^/]+|/api/agent/storage/objects/.+)$")

# No inline script or style anywhere: pages carry their data as JSON, and scripts come from /static.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_STATIC_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def docs_csp(html: str) -> str:
    """The API docs page (Swagger UI) needs its assets' CDN and one inline script: allowed by hash only."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(m.encode()).digest()).decode()}'"
        for m in re.findall(r"<script>(.*?)</script>", html, flags=re.S))
    return (f"default-src 'self'; script-src 'self' https://cdn.jsdelivr.net {hashes}; "
            "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class BodyTooLarge(Exception):
    pass


PROXY_PREFIX = "/proxy/"


def body_limit(path: str) -> int:
    return MAX_CODE_BODY if _CODE_PATH.match(path) or path.startswith(PROXY_PREFIX) else MAX_JSON_BODY


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()


class HTTPGuard:
    def __init__(self, app: ASGIApp, *, docs_policy: Callable[[], str | None] = lambda: None) -> None:
        self.app = app
        self.docs_policy = docs_policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        policy = (self.docs_policy() if path in ("/docs", "/docs/oauth2-redirect") else None) or CSP
        # A service's answers keep their own headers (the proxy sandboxes its HTML pages).
        proxied = path.startswith(PROXY_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and not proxied:
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", policy.encode()), *_STATIC_HEADERS]
                message["headers"] = headers
            await send(message)

        # A NUL can reach neither the DB (PostgreSQL refuses it) nor the file system.
        if "\x00" in path or b"%00" in scope.get("query_string", b"").lower():
            await _respond(send_with_headers, 400, error_body(
                "invalid_request", "the request contains a NUL character"))
            return
        limit = body_limit(path)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _respond(send_with_headers, 413, _too_large(limit))
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send_with_headers(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _respond(send_with_headers, 413, _too_large(limit))


def _too_large(limit: int) -> bytes:
    return error_body("too_large", f"the request body is over the {limit // 2**20} MiB limit for this endpoint")


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
