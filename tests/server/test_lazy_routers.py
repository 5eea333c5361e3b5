"""The API's and the web UI's routers are built at the first request for one of their paths
(server/routers/lazy.py): the health check needs none, `dstack ps` one; the OpenAPI document all."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

from fastapi import FastAPI

from dstack.server.routers.lazy import add_lazy_routers

FIRST_REQUESTS = """
import json, sys
from fastapi.testclient import TestClient
from dstack.server.app import create_app
from dstack.server.settings import Settings

LAZY = ("dstack.server.routers.users", "dstack.server.routers.runs", "dstack.server.routers.fleets",
        "dstack.server.routers.volumes", "dstack.server.routers.projects", "dstack.server.routers.agent_storage",
        "dstack.server.web.pages", "dstack.server.web.settings")
seen = []
with TestClient(create_app(Settings(server_dir=__import__("pathlib").Path({server_dir!r})))) as client:
    for path in ("/api/health", "/api/projects/main/runs", "/api/projects/main/runs", "/openapi.json"):
        response = client.get(path)
        seen.append([path, response.status_code, [m for m in LAZY if m in sys.modules],
                     sorted(response.json().get("paths", {{}})) if path == "/openapi.json" else None])
print(json.dumps(seen))
"""


def test_each_router_is_built_at_the_first_request_that_needs_it(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", FIRST_REQUESTS.format(server_dir=str(tmp_path))],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    health, runs, runs_again, openapi = json.loads(result.stdout.splitlines()[-1])
    assert health[:3] == ["/api/health", 200, []]
    assert runs[:3] == ["/api/projects/main/runs", 401, ["dstack.server.routers.runs"]]  # routed once built
    assert runs_again[:2] == ["/api/projects/main/runs", 401]
    assert openapi[1] == 200 and len(openapi[2]) == 8  # every router, for the document
    assert {"/api/projects/{project_name}/fleets", "/api/users/me", "/api/projects/{project_name}/runs",
            "/api/projects/{project_name}/volumes", "/api/projects"} <= set(openapi[3])


def test_every_route_lies_in_the_paths_of_its_own_routers_placeholder() -> None:
    """A route added outside its placeholder's paths would be a 404 until another router loads."""
    lazies = add_lazy_routers(FastAPI())
    checked = 0
    for lazy in lazies:
        for module in lazy.modules:
            for route in importlib.import_module(module).router.routes:
                path = re.sub(r"\{[^}:]+:path\}", "a/b", route.path)
                path = re.sub(r"\{[^}]+\}", "x", path)
                owner = next(candidate for candidate in lazies if candidate.paths.match(path))
                assert owner is lazy, (route.path, module)
                checked += 1
    assert checked > 50
