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
        # A service among them: listed with its live state (written by the models, not by SQL).
        assert api.post("/api/projects/main/repos", json={"repo_id": "listing-service"}).status_code == 200
        service = {"repo_id": "listing-service", "run_name": "svc", "configuration": {
            "type": "service", "port": 8000, "commands": ["python3 -m http.server 8000"],
            "resources": {"cpu": "1..", "memory": "0.1GB.."}}}
        assert api.post("/api/projects/main/runs", json={"run_spec": service}).status_code == 201

        def settled() -> bool:
            runs = {r["name"]: r for r in api.get("/api/projects/main/runs", params={"all": True}).json()}
            return (runs["ok"]["status"] == "done" and runs["fails"]["status"] == "failed"
                    and runs["unicode"]["status"] == "done" and runs["long"]["status"] == "running")

        wait_for(settled, 120, message="the runs done, failed and running", diagnostics=lambda: [
            (r["name"], r["status"], r["reason"]) for r in api.get("/api/projects/main/runs", params={"all": True}).json()])
        listed = api.get("/api/projects/main/runs", params={"all": True}).json()
        assert [r["name"] for r in listed] == ["svc", "long", "unicode", "fails", "ok"]
        assert listed[0]["service"] is not None and listed[1]["service"] is None, listed[0]
        listed = listed[1:]
        for run in listed:
            assert run == api.get(f"/api/projects/main/runs/{run['name']}").json(), run["name"]
        assert listed[0]["jobs"][0]["offer"]["backend"] == "local"
        assert listed[1]["spec"]["configuration"]["env"]["GREETING"] == 'héllo "x"'
        assert [e["status"] for e in listed[2]["jobs"][0]["history"]][-1] == "failed"
        # Active runs only (and the latest): what `dstack ps` asks first.
        assert [r["name"] for r in api.get("/api/projects/main/runs").json()] == ["svc", "long"]
        api.post("/api/projects/main/runs/long/stop", json={})
        api.post("/api/projects/main/runs/svc/stop", json={"abort": True})


def test_submit_answers_the_run_as_get_reads_it(server: Server) -> None:
    """`POST …/runs` answers with what it wrote, not a read back: it must equal `GET …/runs/NAME`.
    A scheduled run (next fire a year away, at most) stays as submitted, so nothing moves meanwhile."""
    spec = {"repo_id": "submit-answer", "run_name": "later",
            "configuration": {"type": "task", "commands": ["true"], "schedule": {"cron": "0 0 1 1 *"},
                              "env": {"A": "x"}, "resources": {"cpu": "1..", "memory": "0.1GB.."}}}
    with server.api() as api:
        assert api.post("/api/projects/main/repos", json={"repo_id": "submit-answer"}).status_code == 200
        answer = api.post("/api/projects/main/runs", json={"run_spec": spec})
        assert answer.status_code == 201, answer.text
        submitted = answer.json()
        assert submitted["status"] == "submitted" and submitted["reason"].startswith("scheduled: starts at")
        assert [j["status"] for j in submitted["jobs"]] == ["submitted"]
        assert submitted == api.get("/api/projects/main/runs/later").json()
