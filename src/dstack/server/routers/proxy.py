"""The service proxy's endpoints (upstream's paths): /proxy/services/PROJECT/RUN/… and the project's
OpenAI-compatible /proxy/models/PROJECT/…. Routed here, in front of FastAPI's own routing and
dependencies (a proxied request is on the hot path: this is most of what the proxy adds to a
request); the work is in dstack.server.proxy."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from dstack.server.deps import request_token
from dstack.server.proxy.forward import authorize, error, forward, forward_model

PREFIX = "/proxy/"
logger = logging.getLogger("dstack.server.proxy")


class ProxyRoutes:
    """ASGI middleware: /proxy/… answered here, everything else passed on to the app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await _route(scope["app"].state.ctx, request)
        except Exception:
            logger.exception("proxying %s %s failed", request.method, scope["path"])
            response = error(500, "internal_error", "internal server error; see the server log")
        await response(scope, receive, send)


async def _route(ctx: Any, request: Request) -> Response:
    # The raw path: what the caller encoded stays encoded for the app.
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    parts = raw.decode("latin-1")[len(PREFIX):].split("/", 3)
    kind = parts[0]
    if kind == "services" and len(parts) >= 3 and parts[1] and parts[2]:
        project, run = unquote(parts[1]), unquote(parts[2])
        if len(parts) == 3:
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(f"{PREFIX}services/{parts[1]}/{parts[2]}/{query}", status_code=308)
        return await _service(ctx, request, project, run, parts[3])
    if kind == "models" and len(parts) >= 2 and parts[1]:
        rest = "/".join(parts[2:])
        return await forward_model(ctx.proxy, ctx, unquote(parts[1]), request, rest, request_token(request))
    return error(404, "not_found", "no such endpoint: services are at /proxy/services/PROJECT/RUN/, models at "
                 "/proxy/models/PROJECT/")


async def _service(ctx: Any, request: Request, project: str, run: str, path: str) -> Response:
    found = ctx.proxy.find(project, run)
    if found is None:
        return error(404, "not_found", f"project {project!r} has no running service {run!r}")
    denied = await authorize(ctx.proxy, ctx, found, request_token(request))
    if denied is not None:
        return denied
    if not found.conf.strip_prefix:
        path = f"proxy/services/{project}/{run}/{path}"
    return await forward(ctx.proxy, found, request, path)
