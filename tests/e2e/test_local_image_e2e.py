"""`image` jobs on the local backend: pulled from a registry on loopback and run by Podman."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Env, Server, need, wait_for
from tests.registry import Registry, can_run_containers

FINISHED = ("done", "failed", "stopped", "terminated")




@pytest.fixture
def image_server(env: Env, registry: Registry) -> Iterator[Server]:
    env.extra.update(registry.env)
    srv = Server(env).start()
    yield srv
    srv.stop()


def _apply(env: Env, repo: Path, yml: str) -> subprocess.CompletedProcess[str]:
    (repo / ".dstack.yml").write_text(yml)
    return env.cli("apply", "-y", cwd=repo, timeout=180)


def _containers() -> list[str]:
    out = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    return [n for n in out.split() if n.startswith("dstack-")]


def test_image_task_runs_in_a_container(env: Env, image_server: Server, registry: Registry) -> None:
    image = registry.push_busybox("dstack-test/busybox:1")
    repo = env.home / "repo"
    repo.mkdir()
    (repo / "data.txt").write_text("from the repo\n")
    assert env.cli("init", cwd=repo).returncode == 0
    with image_server.api() as api:
        api.put("/api/projects/main/secrets/MY_SECRET", json={"value": "container-secret-42"}).raise_for_status()
    result = _apply(env, repo, f"""type: task
name: boxed
image: {image}
env:
  - GREETING=hi
commands:
  - echo "$GREETING from $(pwd) as $(id -u)"
  - cat data.txt
  - 'echo "secret: $MY_SECRET"'
  - test ! -e /root/.dstack && test -z "$DSTACK_SERVER_ADMIN_TOKEN" && echo "nothing of the server"
  - mkdir -p out && echo artifact-body > out/a.txt
  - exit 3
artifacts: [out]
resources: {{cpu: 1.., memory: 0.1GB..}}
""")
    out = result.stdout
    assert result.returncode != 0, out
    assert f"dstack: pulling image {image}" in out and f"dstack: pulled image {image}" in out
    assert "hi from /workflow as 0" in out and "from the repo" in out and "nothing of the server" in out
    assert "secret: ********" in out and "container-secret-42" not in out
    with image_server.api() as api:
        run = api.get("/api/projects/main/runs/boxed").json()
        assert run["status"] == "failed" and run["exit_code"] == 3, run
        assert [a["path"] for a in api.get("/api/projects/main/runs/boxed/artifacts").json()] == ["out/a.txt"]
    assert not _containers()

    # No commands: the image's own cmd runs; cached images are not pulled again.
    result = _apply(env, repo, f"type: task\nname: own-cmd\nimage: {image}\nresources: {{cpu: 1.., memory: 0.1GB..}}\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello from the image's own cmd" in result.stdout and f"image {image} is cached" in result.stdout


def test_missing_image_fails_at_once_with_the_registrys_reason(env: Env, image_server: Server,
                                                                 registry: Registry) -> None:
    repo = env.home / "repo"
    repo.mkdir()
    assert env.cli("init", cwd=repo).returncode == 0
    result = _apply(env, repo, f"type: task\nname: ghost\nimage: {registry.host}/nope/missing:1\n"
                               "commands: [echo never]\nresources: {cpu: 1.., memory: 0.1GB..}\n")
    assert result.returncode != 0
    assert f"image not found: {registry.host}/nope/missing:1" in result.stdout, result.stdout


def test_stop_stops_the_container(env: Env, image_server: Server, registry: Registry) -> None:
    image = registry.push_busybox("dstack-test/sleeper:1")
    repo = env.home / "repo"
    repo.mkdir()
    assert env.cli("init", cwd=repo).returncode == 0
    (repo / ".dstack.yml").write_text(f"type: task\nname: sleeper\nimage: {image}\n"
                                      "commands: [echo started, sleep 600]\nresources: {cpu: 1.., memory: 0.1GB..}\n")
    assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
    with image_server.api() as api:
        wait_for(lambda: api.get("/api/projects/main/runs/sleeper").json()["status"] == "running", 120,
                 message="the container to run")
        wait_for(lambda: _containers(), 30, message="the container to exist")
        assert env.cli("stop", "sleeper", cwd=repo).returncode == 0
        status = wait_for(lambda: (s := api.get("/api/projects/main/runs/sleeper").json()["status"]) in FINISHED and s,
                          60, message="the run to stop")
        assert status == "stopped"
    wait_for(lambda: not _containers(), 30, message="the container to be gone")


def test_private_registry_with_registry_auth_from_secrets(env: Env, tmp_path: Path) -> None:
    ok, why = can_run_containers()
    need(ok, why)
    private = Registry(tmp_path / "private", users={"robot": "r3g-pass"}).start()
    try:
        image = private.push_busybox("team/private:1")
        env.extra.update(private.env)
        srv = Server(env).start()
        try:
            repo = env.home / "repo"
            repo.mkdir()
            assert env.cli("init", cwd=repo).returncode == 0
            with srv.api() as api:
                api.put("/api/projects/main/secrets/REG_PASS", json={"value": "r3g-pass"}).raise_for_status()
            conf = (f"type: task\nname: {{name}}\nimage: {image}\ncommands: [echo pulled-privately]\n"
                    "registry_auth:\n  username: robot\n  password: {password}\n"
                    "resources: {{cpu: 1.., memory: 0.1GB..}}\n")
            wrong = _apply(env, repo, conf.format(name="wrong", password="not-it"))
            assert wrong.returncode != 0
            assert f"registry refused credentials for {private.host}" in wrong.stdout, wrong.stdout
            right = _apply(env, repo, conf.format(name="right", password="'${{ secrets.REG_PASS }}'"))
            assert right.returncode == 0, right.stdout + right.stderr
            assert "pulled-privately" in right.stdout
            missing = _apply(env, repo, conf.format(name="nosecret", password="'${{ secrets.NOPE }}'"))
            assert missing.returncode != 0 and "the project has no secret 'NOPE'" in missing.stdout, missing.stdout
        finally:
            srv.stop()
    finally:
        private.stop()
