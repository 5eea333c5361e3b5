"""GPU detection through nvidia-smi, dev environments, and aborting a run."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.harness import Env, Server, wait_for

FAKE_NVIDIA_SMI = """#!/bin/sh
# Stands in for the real nvidia-smi (no GPU here): answers the query the local backend makes.
echo "NVIDIA A100-SXM4-80GB, 81920"
echo "NVIDIA A100-SXM4-80GB, 81920"
"""


def test_local_backend_offers_gpus_from_nvidia_smi(env: Env) -> None:
    bin_dir = env.home / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    env.extra["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    server = Server(env).start()
    try:
        repo = env.home / "repo"
        repo.mkdir()
        assert env.cli("init", cwd=repo).returncode == 0
        spec = {"type": "task", "commands": ["nvidia-smi"], "resources": {"cpu": "1..", "memory": "1GB..",
                                                                          "gpu": "A100:80GB:2"}}
        from dstack.api.code import repo_id_for

        with server.api() as api:
            plan = api.post("/api/projects/main/runs/plan", json={"configuration": spec, "repo_id": repo_id_for(repo)})
            assert plan.status_code == 200, plan.text
            gpus = plan.json()["offers"][0]["resources"]["gpus"]
            assert gpus == [{"name": "A100", "memory_gb": 80.0}] * 2
            spec["resources"]["gpu"] = "H100"
            plan = api.post("/api/projects/main/runs/plan", json={"configuration": spec, "repo_id": repo_id_for(repo)})
            assert plan.status_code == 400
            assert "gpu H100:1 (has 2xA100 80GB)" in plan.json()["error"]["message"]
    finally:
        server.stop()


def test_dev_environment_runs_init_and_stays_up_until_stopped(env: Env, server: Server, repo: Path) -> None:
    (repo / ".dstack.yml").write_text(
        "type: dev-environment\nname: dev\ninit: [echo initialised]\nresources: {cpu: 1.., memory: 1GB..}\n")
    assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
    with server.api() as api:
        def logs() -> list[str]:
            return [e["message"] for e in api.get("/api/projects/main/runs/dev/logs").json()["events"]]

        wait_for(lambda: "initialised" in logs() and any("is ready" in m for m in logs()), 30,
                 message="the dev environment to be ready")
        time.sleep(1)
        assert api.get("/api/projects/main/runs/dev").json()["status"] == "running"
        result = env.cli("stop", "dev", "--abort", cwd=repo)
        assert result.returncode == 0, result.stderr
        run = api.get("/api/projects/main/runs/dev").json()
        assert run["status"] == "stopped" and run["reason"] == "aborted by user"
