"""Every API call is authorised: token required, project membership and role enforced."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from tests.harness import Env, Server

TASK = {"type": "task", "commands": ["echo hi"], "resources": {"cpu": "1..", "memory": "1GB.."}}


def test_requests_without_or_with_a_wrong_token_are_refused(server: Server) -> None:
    response = httpx.get(f"{server.url}/api/projects")
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("no token given")
    response = httpx.get(f"{server.url}/api/projects", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert "invalid token" in response.json()["error"]["message"]


def test_tokens_are_stored_hashed(env: Env, server: Server) -> None:
    token = env.token()
    db = sqlite3.connect(env.server_dir / "data" / "sqlite.db")
    hashes = [row[0] for row in db.execute("select token_hash from users")]
    db.close()
    assert hashes and token not in hashes
    assert token.encode() not in (env.server_dir / "data" / "sqlite.db").read_bytes()


def test_membership_and_roles(env: Env, server: Server, repo: Path) -> None:
    with server.api() as admin:
        bob = admin.post("/api/users", json={"name": "bob"}).json()
        assert admin.post("/api/users", json={"name": "bob"}).status_code == 409
        repo_id = admin.get("/api/projects/main").json()  # sanity: admin sees main
        assert repo_id["name"] == "main"
    headers = {"Authorization": f"Bearer {bob['token']}"}
    with httpx.Client(base_url=server.url, headers=headers) as api:
        assert api.get("/api/projects").json() == []
        response = api.get("/api/projects/main/runs")
        assert response.status_code == 404
        assert "not a member" in response.json()["error"]["message"]
        assert api.get("/api/users").status_code == 403  # admin only

        with server.api() as admin:
            admin.put("/api/projects/main/members", json={"user": "bob", "role": "read-only"}).raise_for_status()
        assert api.get("/api/projects/main/runs").status_code == 200
        from dstack.api.code import repo_id_for

        spec = {"configuration": TASK, "repo_id": repo_id_for(repo)}
        response = api.post("/api/projects/main/runs", json={"run_spec": spec})
        assert response.status_code == 403
        assert "needs the user role" in response.json()["error"]["message"]
        assert api.post("/api/projects/main/backends", json={"type": "local"}).status_code == 403

        with server.api() as admin:
            admin.put("/api/projects/main/members", json={"user": "bob", "role": "user"}).raise_for_status()
        response = api.post("/api/projects/main/runs", json={"run_spec": spec})
        assert response.status_code == 201, response.text
        assert response.json()["user"] == "bob"
        # Members who are not project admins cannot change members.
        response = api.put("/api/projects/main/members", json={"user": "bob", "role": "admin"})
        assert response.status_code == 403


def test_invalid_request_bodies_name_the_field(server: Server) -> None:
    with server.api() as api:
        response = api.post("/api/projects", json={"name": "Bad Name!"})
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "name"
        response = api.post("/api/projects/main/runs/plan",
                            json={"configuration": {**TASK, "resources": {"gpu": "A100:24GB"}}, "repo_id": "x"})
        assert response.status_code == 422
        body = response.json()["error"]
        assert "no A100 has 24GB" in body["message"] and body["field"].startswith("configuration")


def test_openapi_page(server: Server) -> None:
    assert "swagger" in httpx.get(f"{server.url}/docs").text.lower()
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/api/projects/{project_name}/runs" in spec["paths"]
    # Every API operation documents its error statuses in the one error shape, which the document holds.
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/api/") and path != "/api/health":
                for status in ("401", "403", "404", "422"):
                    assert operation["responses"][status]["content"]["application/json"]["schema"] == error_ref, \
                        (method, path, status)
    schemas = spec["components"]["schemas"]
    assert schemas["ErrorResponse"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert set(schemas["ErrorBody"]["required"]) == {"code", "message"}


def test_web_login_and_pages(env: Env, server: Server) -> None:
    with httpx.Client(base_url=server.url) as web:
        assert web.get("/projects").status_code == 303  # not logged in: to the login page
        page = web.post("/login", data={"token": "wrong"})
        assert page.status_code == 401 and "Invalid token" in page.text
        page = web.post("/login", data={"token": env.token(), "next": "/projects"}, follow_redirects=True)
        assert page.status_code == 200 and 'href="/projects/main"' in page.text
        assert web.get("/api/projects/main/runs").status_code == 200  # the cookie authorises the page's JS
        assert 'data-project="main"' in web.get("/projects/main").text
        assert web.get("/projects/main/runs/ghost").status_code == 404
