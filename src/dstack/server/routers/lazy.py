"""Routers built at the first request for one of their paths.

Declaring a FastAPI route costs 1-2 ms here (the signatures of its dependencies, a pydantic
TypeAdapter for each parameter and response): the ~60 routes of the API and the web UI were a sixth
of the server's start, and an answer to the health check, or the first `dstack ps`, needs none or
one router of them. So each router stands in the app as one placeholder route owning its paths; the
first request for one of them imports the router's module, puts its routes in the placeholder's
place (the routes keep their order) and is routed again. The OpenAPI document (and so /docs, and
the `Allow` header of a 405) builds them all first.
"""

from __future__ import annotations

import importlib
import re

from fastapi import FastAPI
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send


class LazyRouters(BaseRoute):
    """Stands for the `router` of each of `modules` until a request's path matches `paths`."""

    def __init__(self, app: FastAPI, *, paths: str, modules: tuple[str, ...]) -> None:
        self.app = app
        self.paths = re.compile(paths)
        self.modules = modules

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket") and self.paths.match(scope["path"]):
            return Match.FULL, {}
        return Match.NONE, {}

    def include(self) -> None:
        """The routers' routes in the app, where this placeholder was (nothing if that is done)."""
        routes = self.app.router.routes
        if self not in routes:
            return
        routers = [importlib.import_module(module).router for module in self.modules]  # all, or none included
        before = len(routes)
        for router in routers:
            self.app.include_router(router)
        added = routes[before:]
        del routes[before:]
        place = routes.index(self)
        routes[place:place + 1] = added

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.include()
        await self.app.router(scope, receive, send)


def add_lazy_routers(app: FastAPI) -> list[LazyRouters]:
    """The API's and the web UI's routers, as placeholders. More specific paths first: a project's
    runs, fleets and volumes before the project itself."""
    project = r"/api/projects/[^/]+"
    groups = [
        (r"/api/users(/|$)", ("dstack.server.routers.users",)),
        (rf"{project}/(runs|code)(/|$)", ("dstack.server.routers.runs",)),
        (rf"{project}/fleets(/|$)", ("dstack.server.routers.fleets",)),
        (rf"{project}/volumes(/|$)", ("dstack.server.routers.volumes",)),
        (r"/api/projects(/|$)", ("dstack.server.routers.projects",)),
        (r"/api/agent(/|$)", ("dstack.server.routers.agent_storage",)),
        (r"/($|login$|logout$|projects(/|$)|admin(/|$))", ("dstack.server.web.pages", "dstack.server.web.settings")),
    ]
    lazies = [LazyRouters(app, paths=paths, modules=modules) for paths, modules in groups]
    app.router.routes.extend(lazies)
    return lazies


def include_all(lazies: list[LazyRouters]) -> None:
    for lazy in lazies:
        lazy.include()
