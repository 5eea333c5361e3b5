"""Bad input gets a documented answer, never a 500, never stored: run names, body limits, integer
bounds, NUL characters, unknown routes, malformed JSON, parallel submits of one name."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.harness import Server

TASK = {"type": "task", "commands": ["sleep 30"], "resources": {"cpu": "1..", "memory": "0.1GB.."}}


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "field"} <= set(body["error"]), body
    return body["error"]


@pytest.mark.parametrize("name", ["stuck/run", "../../x", "a\x00b", "abc\n", "x" * 5000, "<b>hi</b>", "Upper"])
def test_invalid_run_names_are_refused(server: Server, name: str) -> None:
    with server.api() as api:
        api.post("/api/projects/main/repos", json={"repo_id": "limits"}).raise_for_status()
        response = api.post("/api/projects/main/runs", json={"run_spec": {
            "configuration": TASK, "repo_id": "limits", "run_name": name}})
        assert response.status_code in (400, 422), response.text
        assert _error(response)["code"] in ("invalid_request", "invalid_configuration")
        assert api.get("/api/projects/main/runs", params={"all": "true"}).json() == []


def test_one_active_run_per_name_even_when_submitted_in_parallel(server: Server) -> None:
    with server.api() as api:
        api.post("/api/projects/main/repos", json={"repo_id": "limits"}).raise_for_status()

    def submit(_: int) -> int:
        with server.api() as api:
            return api.post("/api/projects/main/runs", json={"run_spec": {
                "configuration": TASK, "repo_id": "limits", "run_name": "same"}}).status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(submit, range(10)))
    assert statuses.count(201) == 1 and statuses.count(409) == 9, statuses
    with server.api() as api:
        assert api.post("/api/projects/main/runs/same/stop", json={"abort": True}).status_code == 200


def test_body_limits_answer_413_naming_the_limit(server: Server) -> None:
    with server.api() as api:
        response = api.put("/api/projects/main/secrets/BIG", json={"value": "x" * (10 * 2**20)})
        assert response.status_code == 413 and "1 MiB limit" in _error(response)["message"]
        response = api.put("/api/projects/main/secrets/BIG", json={"value": "x" * (200 * 1024)})
        assert response.status_code == 422 and _error(response)["field"] == "value"
        assert api.get("/api/projects/main/secrets").json() == []
        response = api.post("/api/projects/main/repos", json={"repo_id": "r", "info": {"x": "y" * 100_000}})
        assert response.status_code == 413 and _error(response)["field"] == "info"
        # A code upload over 128 MiB is refused from its Content-Length, before any of it is sent...
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"PUT /api/projects/main/code/{'0' * 64} HTTP/1.1\r\nHost: {host}\r\n"
                         f"Authorization: Bearer {server.env.token()}\r\nContent-Length: {150 * 2**20}\r\n\r\n"
                         .encode())
            head = ""
            while "}}" not in head and (chunk := sock.recv(65536)):
                head += chunk.decode()
        assert head.startswith("HTTP/1.1 413") and "128 MiB" in head, head

        # ...and a chunked one while it streams.
        def chunks():  # noqa: ANN202
            for _ in range(130):
                yield b"\0" * 2**20

        response = api.put(f"/api/projects/main/code/{'0' * 64}", content=chunks())
        assert response.status_code == 413


def test_bounds_nul_unknown_routes_and_malformed_json(server: Server) -> None:
    with server.api() as api:
        response = api.get("/api/projects/main/runs", params={"limit": 10**30})
        assert response.status_code == 422 and _error(response)["field"] == "limit"
        response = api.get("/api/projects/main/runs/x/artifacts/o%00x")
        assert response.status_code == 400 and "NUL" in _error(response)["message"]
        response = api.get("/api/no/such/thing")
        assert response.status_code == 404 and _error(response)["code"] == "not_found"
        response = api.post("/api/projects", content=b"{not json", headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and _error(response)["code"] == "invalid_request"
        response = api.delete("/api/users")
        assert response.status_code == 405 and response.headers["allow"] == "GET, POST"
        response = api.put("/api/projects/main/secrets/OK%0A", json={"value": "v"})
        assert response.status_code == 422, response.text
