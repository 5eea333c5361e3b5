"""`GET …/runs` writes each run's stored JSON (spec, offer, attempts, history) as it is, without the
models: every page must read exactly as `GET …/runs/NAME` (the models' own JSON) reads the same run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Env, Server, server_with_repo, wait_for

RUN = "type: task\nname: {name}\ncommands: [{command}]\nresources: {{cpu: 1.., memory: 0.1GB..}}\n"


def test_listed_runs_read_as_the_models_write_them(env: Env, server: Server, repo: Path) -> None:
    check_listing(env, server, repo)


@pytest.mark.postgres
def test_listed_runs_read_as_the_models_write_them_postgres(env: Env, postgres_url: str) -> None:
    # PostgreSQL hands back its own types (timestamps with their zone, booleans): the same JSON.
    with server_with_repo(env, postgres_url) as (server, repo):
        check_listing(env, server, repo)


def check_listing(env: Env, server: Server, repo: Path) -> None:
    for name, command, extra in (("ok", "echo hi", ""), ("fails", "exit 3", ""),
                                 ("unicode", "echo ünï \\\"quoted\\\"", "env: {GREETING: 'héllo \"x\"'}\n"),
                                 ("long", "sleep 600", "")):
        (repo / ".dstack.yml").write_text(RUN.format(name=name, command=f'"{command}"') + extra)
        result = env.cli("apply", "-y", "-d", cwd=repo)
        assert result.returncode == 0, result.stderr
    with server.api() as api:
        def settled() -> bool:
            runs = {r["name"]: r for r in api.get("/api/projects/main/runs", params={"all": True}).json()}
            return (runs["ok"]["status"] == "done" and runs["fails"]["status"] == "failed"
                    and runs["unicode"]["status"] == "done" and runs["long"]["status"] == "running")

        wait_for(settled, 120, message="the runs done, failed and running", diagnostics=lambda: [
            (r["name"], r["status"], r["reason"]) for r in api.get("/api/projects/main/runs", params={"all": True}).json()])
        listed = api.get("/api/projects/main/runs", params={"all": True}).json()
        assert [r["name"] for r in listed] == ["long", "unicode", "fails", "ok"]
        for run in listed:
            assert run == api.get(f"/api/projects/main/runs/{run['name']}").json(), run["name"]
        assert listed[0]["jobs"][0]["offer"]["backend"] == "local"
        assert listed[1]["spec"]["configuration"]["env"]["GREETING"] == 'héllo "x"'
        assert [e["status"] for e in listed[2]["jobs"][0]["history"]][-1] == "failed"
        # Active runs only (and the latest): what `dstack ps` asks first.
        assert [r["name"] for r in api.get("/api/projects/main/runs").json()] == ["long"]
        api.post("/api/projects/main/runs/long/stop", json={})
