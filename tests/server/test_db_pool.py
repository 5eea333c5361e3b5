"""More concurrent requests than the database pool has connections (SQLite: 5 + 10 overflow)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.harness import Server

CONCURRENT = 40


def test_more_concurrent_plans_and_submits_than_pooled_connections_all_answer(server: Server) -> None:
    """Planning reads through sessions of its own. A request that held its connection meanwhile took
    a second one: with as many such requests as the pool's connections, each waited for a second
    until the pool's timeout (30 s) and answered 500."""
    spec = {"repo_id": "pool", "configuration": {"type": "task", "commands": ["true"],
                                                 "schedule": {"cron": "0 0 1 1 *"},  # stays submitted
                                                 "resources": {"cpu": "1..", "memory": "0.1GB.."}}}
    with server.api() as api:
        assert api.post("/api/projects/main/repos", json={"repo_id": "pool"}).status_code == 200

    def call(i: int) -> tuple[int, str]:
        # Each thread a connection of its own: the requests arrive at once.
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.env.token()}"},
                          timeout=20) as client:
            if i % 2:
                response = client.post("/api/projects/main/runs/plan", json=spec)
                return response.status_code, response.text[:200]
            response = client.post("/api/projects/main/runs", json={"run_spec": {**spec, "run_name": f"pool-{i}"}})
            return response.status_code, response.text[:200]

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(call, range(CONCURRENT)))
    assert [code for code, _ in answers] == [201 if i % 2 == 0 else 200 for i in range(CONCURRENT)], answers
