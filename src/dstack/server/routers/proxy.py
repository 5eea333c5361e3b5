"""The service proxy's endpoints (upstream's paths): /proxy/services/PROJECT/RUN/… and the
project's OpenAI-compatible /proxy/models/PROJECT/…; the work is in dstack.server.proxy."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from dstack.server.deps import request_token
from dstack.server.proxy.forward import authorize, error, forward, forward_model

router = APIRouter(include_in_schema=False)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@router.api_route("/proxy/services/{project}/{run}", methods=METHODS)
async def service_root(project: str, run: str, request: Request) -> Response:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/proxy/services/{project}/{run}/{query}", status_code=308)


@router.api_route("/proxy/services/{project}/{run}/{path:path}", methods=METHODS)
async def service(project: str, run: str, path: str, request: Request) -> Response:
    ctx = request.app.state.ctx
    found = ctx.proxy.find(project, run)
    if found is None:
        return error(404, "not_found", f"project {project!r} has no running service {run!r}")
    denied = await authorize(ctx.proxy, ctx, found, request_token(request))
    if denied is not None:
        return denied
    if not found.conf.strip_prefix:
        path = f"proxy/services/{project}/{run}/{path}"
    return await forward(ctx.proxy, found, request, path)


@router.api_route("/proxy/models/{project}/{path:path}", methods=METHODS)
async def model(project: str, path: str, request: Request) -> Response:
    ctx = request.app.state.ctx
    return await forward_model(ctx.proxy, ctx, project, request, path, request_token(request))
