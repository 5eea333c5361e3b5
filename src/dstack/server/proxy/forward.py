"""One request through the proxy: who may call (project members' tokens unless `auth: false`), the
rate limits, which replica (the least busy ready one, in turn), and the answer streamed back as it
comes (SSE unbuffered). A replica that cannot be reached before it answered is taken out of rotation
and the request goes to another one."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dstack.server.deps import TOKEN_COOKIE
from dstack.server.proxy.registry import Replica, Service, ServiceProxy
from dstack.server.services.users import hash_token

if TYPE_CHECKING:
    import aiohttp

    from dstack.server.context import ServerContext

# Hop-by-hop headers (RFC 9110 7.6.1) and what the proxy sets itself.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length"}
# Tokens checked against the DB at most this often (a revoked token or membership counts within it).
AUTH_CACHE_SECONDS = 5.0


def cold_start_timeout() -> float:
    """How long a request waits for a ready replica (a service scaled to zero, or still starting)."""
    return float(os.environ.get("DSTACK_SERVICE_COLD_START_TIMEOUT", "300"))


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "field": None}}, status_code=status,
                        headers=headers)


async def authorize(proxy: ServiceProxy, ctx: ServerContext, service: Service, token: str | None) -> Response | None:
    """None if the caller may use the service; else the 401/403 answer."""
    if not service.conf.auth:
        return None
    if not token:
        return error(401, "not_authenticated", f"service {service.name!r} needs a token: pass "
                     "`Authorization: Bearer TOKEN` (a member of project "
                     f"{service.project!r}; or deploy it with `auth: false`)", {"WWW-Authenticate": "Bearer"})
    digest = hash_token(token)
    cached = proxy.tokens.get(digest)
    if cached is None or time.monotonic() - cached[0] > AUTH_CACHE_SECONDS:
        cached = await _lookup(ctx, digest)
        proxy.tokens[digest] = cached
        if len(proxy.tokens) > 10_000:
            proxy.tokens.clear()
    _, user, roles, admin = cached
    if user is None:
        return error(401, "not_authenticated", "invalid token", {"WWW-Authenticate": "Bearer"})
    if not admin and service.project not in roles:
        return error(403, "forbidden", f"user {user!r} is not a member of project {service.project!r}")
    return None


async def _lookup(ctx: ServerContext, digest: str) -> tuple[float, str | None, dict[str, str], bool]:
    from sqlalchemy import select

    from dstack.server.models import MemberModel, ProjectModel, UserModel

    async with ctx.db.session() as session:
        user = await session.scalar(select(UserModel).where(UserModel.token_hash == digest))
        if user is None or not hmac.compare_digest(user.token_hash, digest):
            return time.monotonic(), None, {}, False
        rows = await session.execute(select(ProjectModel.name, MemberModel.role).join(
            MemberModel, MemberModel.project_id == ProjectModel.id).where(MemberModel.user_id == user.id))
        roles = {name: role for name, role in rows}
        await session.commit()
        return time.monotonic(), user.name, roles, user.global_role == "admin"


async def pick(proxy: ServiceProxy, service: Service) -> Replica | Response:
    """The least busy ready replica (ties in turn); waits for one while none is ready."""
    deadline = time.monotonic() + cold_start_timeout()
    while True:
        ready = service.ready_replicas()
        if ready:
            start = next(service.turn) % len(ready)
            ordered = ready[start:] + ready[:start]
            return min(ordered, key=lambda r: r.in_flight)
        if proxy.by_run.get(service.run_id) is not service:
            return error(503, "service_unavailable", f"service {service.name!r} is no longer running")
        proxy.demand()
        left = deadline - time.monotonic()
        if left <= 0:
            why = "; ".join(sorted({r.problem for r in service.replicas.values() if r.problem})) or \
                "its replicas are starting" if service.replicas else "it is scaling up from zero"
            return error(503, "no_ready_replica",
                         f"service {service.name!r} has no ready replica after {cold_start_timeout():g} s ({why})",
                         {"Retry-After": "10"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.became_ready.wait(), timeout=min(left, 1.0))


def forward_headers(request: Request, *, strip_auth: bool) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
    if strip_auth:  # the caller's dstack token is the server's business, not the service's
        headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
    cookies = [c for c in request.headers.get("cookie", "").split(";") if c.strip()]
    kept = [c for c in cookies if not c.strip().startswith(f"{TOKEN_COOKIE}=")]
    headers = [(k, v) for k, v in headers if k.lower() != "cookie"]
    if kept:
        headers.append(("cookie", ";".join(kept).strip()))
    client = request.client.host if request.client else ""
    prior = request.headers.get("x-forwarded-for")
    headers += [("x-forwarded-for", f"{prior}, {client}" if prior else client),
                ("x-forwarded-proto", request.scope.get("scheme", "http")),
                ("x-forwarded-host", request.headers.get("host", ""))]
    return headers


async def forward(proxy: ServiceProxy, service: Service, request: Request, path: str,
                  body: bytes | None = None) -> Response:
    """Send the request to a ready replica at `path` (with its query, as sent) and stream the answer
    back."""
    import aiohttp  # on first use (see ServiceProxy.client)
    from yarl import URL

    if service.limiter is not None:
        client = request.client.host if request.client else ""
        wait = service.limiter.check("/" + path.lstrip("/"), client, request.headers)
        if wait is not None:
            return error(429, "rate_limited", f"service {service.name!r}: rate limit reached",
                         {"Retry-After": str(max(1, round(wait)))})
    service.meter.hit()
    content = body if body is not None else await request.body()
    headers = forward_headers(request, strip_auth=bool(service.conf.auth))
    query = request.scope.get("query_string", b"").decode("latin-1")
    tried: set[str] = set()
    last = ""
    for _ in range(3):
        replica = await pick(proxy, service)
        if isinstance(replica, Response):
            return replica
        if replica.job_id in tried and len(service.ready_replicas()) > 1:
            continue
        tried.add(replica.job_id)
        assert replica.address is not None
        url = URL(f"http://{replica.address[0]}:{replica.address[1]}/{path.lstrip('/')}"
                  + (f"?{query}" if query else ""), encoded=True)
        replica.in_flight += 1
        try:
            upstream = await proxy.client.request(request.method, url, headers=headers, data=content or None,
                                                  allow_redirects=False)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            # Nothing came back: the request did not reach the app (or it died before answering).
            replica.in_flight -= 1
            last = type(exc).__name__
            proxy.failed(service, replica, last)
            continue
        except BaseException:
            replica.in_flight -= 1
            raise
        out = [(k, v) for k, v in upstream.raw_headers if k.decode("latin-1").lower() not in _HOP]
        length = upstream.headers.get("content-length")
        if length is not None:  # the raw bytes pass as they are, encoded or not
            out.append((b"content-length", length.encode("latin-1")))
        if upstream.headers.get("content-type", "").startswith("text/html"):
            # A service's pages share this server's origin: sandboxed, their scripts cannot act with a
            # signed-in user's cookie on the server's API (docs/services.md).
            out.append((b"content-security-policy", b"sandbox allow-scripts allow-forms allow-popups "
                                                    b"allow-downloads allow-modals"))
        response = StreamingResponse(_stream(upstream, replica), status_code=upstream.status)
        response.raw_headers = [(k.lower(), v) for k, v in out]
        return response
    return error(502, "bad_gateway", f"service {service.name!r}: no replica could be reached ({last})")


async def _stream(upstream: aiohttp.ClientResponse, replica: Replica) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    finally:
        replica.in_flight -= 1
        upstream.release()


async def forward_model(proxy: ServiceProxy, ctx: ServerContext, project: str, request: Request, path: str,
                        token: str | None) -> Response:
    """The project's OpenAI-compatible endpoint: `GET models` lists the models its services serve; a
    call naming `model` goes to that service, at the service's `model.prefix`."""
    path = path.strip("/").removeprefix("v1/").removeprefix("v1")
    models = proxy.models(project)
    if path == "models" and request.method == "GET":
        allowed = [s for s in models.values() if await authorize(proxy, ctx, s, token) is None]
        if models and not allowed and token is None:
            return error(401, "not_authenticated", "pass `Authorization: Bearer TOKEN`",
                         {"WWW-Authenticate": "Bearer"})
        return JSONResponse({"object": "list", "data": [
            {"id": s.conf.model.name, "object": "model", "created": 0, "owned_by": s.project} for s in allowed]})
    body = await request.body()
    try:
        name = json.loads(body).get("model") if body else None
    except (ValueError, AttributeError):
        name = None
    if not isinstance(name, str) or not name:
        return error(400, "invalid_request", "the body must be JSON naming a `model` (see GET models)")
    service = models.get(name)
    if service is None:
        return error(404, "model_not_found", f"project {project!r} serves no model {name!r} "
                     f"(it serves: {', '.join(sorted(models)) or 'none'})")
    denied = await authorize(proxy, ctx, service, token)
    if denied is not None:
        return denied
    prefix = service.conf.model.prefix.strip("/")
    return await forward(proxy, service, request, f"{prefix}/{path}" if prefix else path, body=body)
