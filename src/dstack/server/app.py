"""The FastAPI application: API routers, web pages, error handling, workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from dstack import __version__
from dstack.core.errors import DstackError
from dstack.server.context import ServerContext
from dstack.server.db import Database
from dstack.server.http_guard import BodyTooLarge, HTTPGuard, body_limit, docs_csp, error_body
from dstack.server.memory import trim_after_bursts
from dstack.server.routers import proxy
from dstack.server.routers.lazy import add_lazy_routers, include_all
from dstack.server.schemas import error_schemas
from dstack.server.settings import Settings
from dstack.server.web.common import PageExit, mount_static
from dstack.server.workers import start_workers

logger = logging.getLogger("dstack.server")


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI documents for `path` (an artifact's `{path}` spans '/')."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern = re.escape(template).replace(r"\{path\}", ".+")
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", pattern)
        if re.fullmatch(pattern, path):
            methods.update(m.upper() for m in operations)
    return sorted(methods)


def create_app(settings: Settings) -> FastAPI:
    """The app; `dstack server` bootstraps the DB (admin, project `main`, config file) before serving it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = ServerContext(settings=settings, db=Database(settings))
        app.state.ctx = ctx
        tasks = [*start_workers(ctx), asyncio.create_task(trim_after_bursts())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ctx.proxy.close()
            await ctx.db.close()

    app = FastAPI(title="dstack", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="The dstack server API. Authenticate with `Authorization: Bearer TOKEN`. "
                              "Every error answers `{\"error\": {\"code\", \"message\", \"field\"}}`.")
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document, with the error shape every route refers to (see ERROR_RESPONSES)."""
        if app.openapi_schema is None:
            include_all(lazy_routers)  # every route, built now if no request has needed it yet
            default_openapi()["components"]["schemas"].update(error_schemas())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    docs_html = get_swagger_ui_html(openapi_url="/openapi.json", title="dstack API").body.decode()
    docs_policy = docs_csp(docs_html)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_html)

    # The API's and the web UI's routes are built at the first request that needs them (routers/lazy.py).
    lazy_routers = add_lazy_routers(app)
    mount_static(app)

    @app.exception_handler(PageExit)
    async def _page_exit(request: Request, exc: PageExit) -> Response:
        return exc.response

    @app.exception_handler(DstackError)
    async def _dstack_error(request: Request, exc: DstackError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> Response:
        limit = body_limit(request.url.path)
        return Response(error_body("too_large", f"the request body is over the {limit // 2**20} MiB limit for "
                                   "this endpoint"), status_code=413, media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 401: "not_authenticated", 403: "forbidden"}.get(
            exc.status_code, "invalid_request")
        message = "no such endpoint; see /docs" if exc.status_code == 404 else str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method of the path, not only those of the route that matched
            headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path))
        return Response(error_body(code, message), status_code=exc.status_code, media_type="application/json",
                        headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        message = err["msg"].removeprefix("Value error, ")
        body = {"code": "invalid_request", "message": f"{field}: {message}" if field else message, "field": field}
        return JSONResponse({"error": body}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {"code": "internal_error", "message": "internal server error; see the server log", "field": None}
        return JSONResponse({"error": body}, status_code=500)

    @app.get("/api/health", tags=["server"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.add_middleware(proxy.ProxyRoutes)  # inside the guard (body limits, NUL check), before FastAPI's routing
    app.add_middleware(HTTPGuard, docs_policy=lambda: docs_policy)
    return app
