"""The CLI users know from upstream: `dstack offer` (table and --json), `dstack apply` flags that
override the configuration, `--force` over an active run of the same name, `dstack delete`,
`dstack --version`."""

from __future__ import annotations

import json
from pathlib import Path

from dstack import __version__
from tests.harness import Env, Server, wait_for


def test_version(env: Env) -> None:
    result = env.cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"dstack {__version__}"


def test_offer_for_flags_alone_and_for_a_configuration(env: Env, server: Server, repo: Path) -> None:
    result = env.cli("offer", "--cpu", "1..", "--json", cwd=repo)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["project"] == "main" and data["offers"][0]["backend"] == "local"
    assert data["resources"].startswith("cpu=1..")
    table = env.cli("offer", cwd=repo)
    assert table.returncode == 0 and "BACKEND" in table.stdout and "local" in table.stdout
    (repo / "big.yml").write_text("type: task\ncommands: [x]\nresources:\n  memory: 100TB..\n")
    result = env.cli("offer", "-f", "big.yml", cwd=repo)
    assert result.returncode != 0 and "no offers match" in result.stderr
    result = env.cli("offer", "--gpu", "A1000", cwd=repo)
    assert result.returncode != 0 and "A1000 is not a GPU dstack knows" in result.stderr


def test_apply_flags_override_the_configuration(env: Env, server: Server, repo: Path) -> None:
    (repo / ".dstack.yml").write_text("type: task\nname: flags\nenv: [WHO=file]\ncommands: ['echo \"WHO=$WHO\"']\n")
    result = env.cli("apply", "-y", "-e", "WHO=cli", "--max-duration", "10m", "--cpu", "1..", "-b", "local",
                     cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WHO=cli" in result.stdout and "Max duration   10m" in result.stdout
    with server.api() as api:
        conf = api.get("/api/projects/main/runs/flags").json()["spec"]["configuration"]
    assert conf["max_duration"] == 600 and conf["backends"] == ["local"] and conf["resources"]["cpu"]["min"] == 1
    result = env.cli("apply", "-y", "--gpu", "A100:24GB", cwd=repo)
    assert result.returncode != 0 and "resources.gpu" in result.stderr and "(from the command line)" in result.stderr
    result = env.cli("apply", "-y", "--spot", "--on-demand", cwd=repo)
    assert result.returncode != 0 and "give one of --spot, --on-demand" in result.stderr


def test_force_replaces_an_active_run_and_delete_stops_it(env: Env, server: Server, repo: Path) -> None:
    (repo / ".dstack.yml").write_text("type: task\nname: long\ncommands: [sleep 300]\n")
    assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
    with server.api() as api:
        wait_for(lambda: api.get("/api/projects/main/runs/long").json()["status"] == "running", 60,
                 message="the first run")
        first = api.get("/api/projects/main/runs/long").json()["id"]
        result = env.cli("apply", "-y", "-d", cwd=repo)  # the same configuration: nothing to do
        assert result.returncode == 0 and "nothing to do (--force restarts it)" in result.stdout, result.stdout
        assert api.get("/api/projects/main/runs/long").json()["id"] == first
        result = env.cli("apply", "-y", "--force", "-d", cwd=repo)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Stopped the active run long" in result.stdout
        second = api.get("/api/projects/main/runs/long").json()
        assert second["id"] != first
        result = env.cli("delete", "-y", cwd=repo)
        assert result.returncode == 0 and "Stopping long" in result.stdout
        wait_for(lambda: api.get("/api/projects/main/runs/long").json()["status"] == "stopped", 60,
                 message="the run to stop")
    (repo / "fleet.yml").write_text("type: fleet\nname: f\nnodes: 1\n")
    result = env.cli("delete", "-y", "-f", "fleet.yml", cwd=repo)
    assert result.returncode != 0 and "fleet 'f' does not exist in project 'main'" in result.stderr


def test_local_backend_refuses_what_it_cannot_honour(env: Env, server: Server, repo: Path) -> None:
    """Container-only fields without `image`, zones, reservations: the plan says why, nothing is ignored."""
    with server.api() as api:
        for extra, reason in (({"privileged": True, "user": "1000"}, "`privileged`, `user` need `image` on the local"),
                              ({"availability_zones": ["us-east-1a"]}, "the local backend has no availability zones"),
                              ({"reservation": "cr-1"}, "the local backend has no capacity reservations")):
            body = api.post("/api/projects/main/runs/plan", json={
                "repo_id": "x", "configuration": {"type": "task", "commands": ["true"], **extra}}).json()
            assert body["error"]["code"] == "no_offers" and reason in body["error"]["message"], body
        ok = api.post("/api/projects/main/runs/plan", json={"repo_id": "x", "configuration": {
            "type": "task", "image": "busybox", "commands": ["true"], "privileged": True}})
        assert ok.status_code == 200 or "Docker or Podman" in ok.text
