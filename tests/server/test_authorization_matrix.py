"""Every operation of the OpenAPI × every kind of caller, with the expected outcome written down.

A new endpoint without an entry in EXPECTED fails the test: its authorisation must be decided.
Callers: no token, a bad token, a member of another project only, read-only, user and admin members
of the project, and a global admin. A caller below the required level gets 401 (no or bad token),
404 "not a member" (project endpoints, non-members) or 403; a caller at or above it gets past
authorisation (whatever the outcome of the request itself).
"""

from __future__ import annotations

import httpx
import pytest

from tests.harness import Server

LEVELS = ["public", "authenticated", "read-only", "user", "admin", "global-admin"]
CALLERS = ["none", "bad", "other-project", "read-only", "user", "admin", "global-admin"]
# The level each caller holds in project `target` (other-project: any logged-in user with no role there).
CALLER_LEVEL = {"none": -1, "bad": -1, "other-project": 1, "read-only": 2, "user": 3, "admin": 4,
                "global-admin": 5}

EXPECTED = {
    "GET /api/health": "public",
    "GET /api/users/me": "authenticated",
    "GET /api/users": "global-admin",
    "POST /api/users": "global-admin",
    "POST /api/users/{name}/token": "global-admin",
    "GET /api/projects": "authenticated",
    "POST /api/projects": "authenticated",
    "GET /api/projects/{project_name}": "read-only",
    "PUT /api/projects/{project_name}/members": "admin",
    "DELETE /api/projects/{project_name}/members/{user_name}": "admin",
    "POST /api/projects/{project_name}/backends/check": "admin",
    "POST /api/projects/{project_name}/backends": "admin",
    "PUT /api/projects/{project_name}/backends": "admin",
    "DELETE /api/projects/{project_name}/backends/{backend_type}": "admin",
    "POST /api/projects/{project_name}/repos": "user",
    "PUT /api/projects/{project_name}/repos/credentials": "user",
    "GET /api/projects/{project_name}/repos/credentials": "read-only",
    "DELETE /api/projects/{project_name}/repos/credentials": "user",
    "GET /api/projects/{project_name}/secrets": "read-only",
    "PUT /api/projects/{project_name}/secrets/{name}": "admin",
    "DELETE /api/projects/{project_name}/secrets/{name}": "admin",
    "PUT /api/projects/{project_name}/code/{code_hash}": "user",
    "HEAD /api/projects/{project_name}/code/{code_hash}": "read-only",
    "POST /api/projects/{project_name}/runs/plan": "read-only",
    "POST /api/projects/{project_name}/runs": "user",
    "GET /api/projects/{project_name}/runs": "read-only",
    "GET /api/projects/{project_name}/runs/{run_name}": "read-only",
    "POST /api/projects/{project_name}/runs/{run_name}/stop": "user",
    "GET /api/projects/{project_name}/runs/{run_name}/attach": "user",
    "GET /api/projects/{project_name}/runs/{run_name}/logs": "read-only",
    "GET /api/projects/{project_name}/runs/{run_name}/metrics": "read-only",
    "GET /api/projects/{project_name}/runs/{run_name}/artifacts": "read-only",
    "GET /api/projects/{project_name}/runs/{run_name}/artifacts/{path}": "read-only",
    "POST /api/projects/{project_name}/fleets/plan": "read-only",
    "POST /api/projects/{project_name}/fleets": "user",
    "GET /api/projects/{project_name}/fleets": "read-only",
    "GET /api/projects/{project_name}/fleets/{fleet_name}": "read-only",
    "DELETE /api/projects/{project_name}/fleets/{fleet_name}": "user",
    "POST /api/projects/{project_name}/volumes": "user",
    "GET /api/projects/{project_name}/volumes": "read-only",
    "GET /api/projects/{project_name}/volumes/{volume_name}": "read-only",
    "DELETE /api/projects/{project_name}/volumes/{volume_name}": "user",
}
# Harmless arguments: targets that do not exist or belong to nobody who matters.
PATH_ARGS = {"project_name": "target", "name": "TARGET_SECRET", "user_name": "target-user", "run_name": "ghost",
             "backend_type": "lambda", "code_hash": "0" * 64, "path": "nothing.txt",
             "fleet_name": "ghost-fleet", "volume_name": "ghost-volume"}
BODIES = {
    "POST /api/users": {"name": "made-by-matrix"},
    "POST /api/projects": {"name": "made-by-matrix"},
    "PUT /api/projects/{project_name}/members": {"user": "target-user", "role": "read-only"},
    "POST /api/projects/{project_name}/backends/check": {"type": "lambda"},
    "POST /api/projects/{project_name}/backends": {"type": "lambda"},
    "PUT /api/projects/{project_name}/backends": {"type": "lambda"},
    "POST /api/projects/{project_name}/repos": {"repo_id": "matrix"},
    "PUT /api/projects/{project_name}/secrets/{name}": {"value": "v"},
    "PUT /api/projects/{project_name}/repos/credentials": {"url": "https://git.example.com/matrix.git", "token": "t"},
    "POST /api/projects/{project_name}/runs/plan": {"configuration": {"type": "task", "commands": ["true"]},
                                                    "repo_id": "matrix"},
    "POST /api/projects/{project_name}/runs": {"run_spec": {"configuration": {"type": "task", "commands": ["true"]},
                                                            "repo_id": "matrix"}},
    "POST /api/projects/{project_name}/runs/{run_name}/stop": {},
    "POST /api/projects/{project_name}/fleets/plan": {"configuration": {"type": "fleet", "nodes": 1}},
    "POST /api/projects/{project_name}/fleets": {"configuration": {"type": "fleet", "nodes": 1}},
    "POST /api/projects/{project_name}/volumes": {"configuration": {"type": "volume", "backend": "local",
                                                                     "region": "here", "size": "1GB"}},
}


@pytest.fixture(scope="module")
def matrix_server(tmp_path_factory) -> tuple[Server, dict[str, str | None]]:  # noqa: ANN001
    from tests.harness import Env

    env = Env(home=tmp_path_factory.mktemp("matrix-home"))
    server = Server(env).start()
    tokens: dict[str, str | None] = {"none": None, "bad": "not-a-real-token", "global-admin": env.token()}
    with server.api() as admin:
        admin.post("/api/projects", json={"name": "target"}).raise_for_status()
        admin.post("/api/projects", json={"name": "elsewhere"}).raise_for_status()
        admin.post("/api/users", json={"name": "target-user"}).raise_for_status()
        for caller, name, project, role in (("other-project", "olivia", "elsewhere", "admin"),
                                            ("read-only", "rita", "target", "read-only"),
                                            ("user", "ulrich", "target", "user"),
                                            ("admin", "ada", "target", "admin")):
            tokens[caller] = admin.post("/api/users", json={"name": name}).json()["token"]
            admin.put(f"/api/projects/{project}/members", json={"user": name, "role": role}).raise_for_status()
    yield server, tokens
    server.stop()


def _operations(server: Server) -> list[tuple[str, str]]:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


def test_every_operation_has_an_expectation(matrix_server) -> None:  # noqa: ANN001
    server, _ = matrix_server
    missing = [f"{m} {p}" for m, p in _operations(server) if f"{m} {p}" not in EXPECTED]
    assert missing == [], f"decide who may call these, then add them to EXPECTED: {missing}"
    stale = set(EXPECTED) - {f"{m} {p}" for m, p in _operations(server)}
    assert not stale, stale


@pytest.mark.parametrize("caller", CALLERS)
def test_authorization_matrix(matrix_server, caller: str) -> None:  # noqa: ANN001
    server, tokens = matrix_server
    token = tokens[caller]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    failures = []
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as api:
        for method, path in _operations(server):
            key = f"{method} {path}"
            required = LEVELS.index(EXPECTED[key])
            url = path.format(**{k: v for k, v in PATH_ARGS.items() if "{" + k + "}" in path})
            body = BODIES.get(key)
            response = api.request(method, url, json=body) if body is not None else api.request(method, url)
            text = response.text if method != "HEAD" else ""
            level = CALLER_LEVEL[caller]
            allowed = required == 0 or level >= required
            if allowed:
                ok = response.status_code not in (401, 403) and "not a member" not in text
            elif caller in ("none", "bad"):
                ok = response.status_code == 401
            elif "{project_name}" in path and caller == "other-project":
                ok = response.status_code == 404 and (method == "HEAD" or "not a member" in text)
            else:
                ok = response.status_code == 403
            if not ok:
                failures.append(f"{key}: {response.status_code} {text[:200]}")
    assert failures == [], f"{caller}: " + "\n".join(failures)
