"""A member cannot reach the server through a local job: files, environment, processes.

Each role that may run jobs (user, project admin) submits a job that tries what an attacker would:
read the encryption key, the DB, the CLI config and the server's SSH key, read every process's
environment, signal the server. The job sees none of it, and the server is unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx
import pytest

from tests.harness import Env, Server, need, run_logs, wait_for

ADMIN_TOKEN = "isolation-admin-token"
LEAKS = {"AWS_SECRET_ACCESS_KEY": "aws-leak-canary", "DSTACK_SERVER_ADMIN_TOKEN": ADMIN_TOKEN}


def _sandbox_ready() -> bool:
    if shutil.which("bwrap") is None:
        return False
    from dstack.agent.sandbox import available

    return available("nobody") is None


@pytest.fixture
def isolated_server(env: Env) -> Server:
    need(_sandbox_ready(), "bubblewrap with user namespaces is needed to sandbox local jobs")
    env.extra.update(LEAKS)
    srv = Server(env).start()
    yield srv
    srv.stop()


def _probe(server_dir: str, home: str, server_pid: int) -> list[str]:
    targets = [f"{server_dir}/data/encryption.key", f"{server_dir}/data/sqlite.db", f"{server_dir}/data/ssh",
               f"{home}/.dstack/config.yml", f"{server_dir}/projects"]
    script = ["set +e", "echo ENV-BEGIN", "env | sort", "echo ENV-END"]
    for path in targets:
        script += [f"[ -e {path} ] && echo SEEN {path}", f"cat {path} >/dev/null 2>&1 && echo READ {path}"]
    script += [
        "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null | grep -q -e aws-leak-canary "
        f"-e {ADMIN_TOKEN} && echo ENVLEAK $p; done",
        "echo PIDS $(ls -d /proc/[0-9]* | wc -l)",
        f"kill -0 {server_pid} 2>/dev/null && echo SIGNALLED",
        f"touch {server_dir}/pwned 2>/dev/null && echo WROTE",
        "echo UID $(id -u)",
        "echo PROBE-DONE",
    ]
    return script


def _submit_and_logs(server: Server, token: str, name: str, commands: list[str], env: Env) -> tuple[str, str]:
    from dstack.api.code import repo_id_for

    repo = env.home / f"repo-{name}"
    repo.mkdir()
    repo_id = repo_id_for(repo)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as api:
        api.post("/api/projects/main/repos", json={"repo_id": repo_id}).raise_for_status()
        task = {"type": "task", "name": name, "commands": commands, "env": {"MINE": "1"},
                "resources": {"cpu": "1..", "memory": "0.1GB.."}}
        response = api.post("/api/projects/main/runs", json={"run_spec": {"configuration": task, "repo_id": repo_id}})
        assert response.status_code == 201, response.text
        status = wait_for(lambda: (r := api.get(f"/api/projects/main/runs/{name}").json())["status"]
                          in ("done", "failed", "stopped") and r["status"], timeout=120, message="the probe job")
        return status, run_logs(api, name)


def test_members_jobs_see_nothing_of_the_server(env: Env, isolated_server: Server) -> None:
    server = isolated_server
    server_dir = str(env.server_dir)
    with server.api(ADMIN_TOKEN) as admin:
        users_before = admin.get("/api/users").json()
        admin.put("/api/projects/main/secrets/MY_SECRET", json={"value": "s3cr3t-value"}).raise_for_status()
        tokens = {}
        for name, role in (("ursula", "user"), ("padma", "admin"), ("rory", "read-only")):
            tokens[role] = admin.post("/api/users", json={"name": name}).json()["token"]
            admin.put("/api/projects/main/members", json={"user": name, "role": role}).raise_for_status()
        users_before = admin.get("/api/users").json()

    # A read-only member cannot run anything at all.
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tokens['read-only']}"}) as ro:
        response = ro.post("/api/projects/main/runs", json={"run_spec": {"configuration": {
            "type": "task", "commands": ["id"]}, "repo_id": "x"}})
        assert response.status_code == 403
        assert ro.post("/api/projects/main/repos", json={"repo_id": "x"}).status_code == 403

    assert server.proc is not None
    for role in ("user", "admin"):
        status, logs = _submit_and_logs(server, tokens[role], f"probe-{role}",
                                        _probe(server_dir, str(env.home), server.proc.pid), env)
        assert "PROBE-DONE" in logs, logs
        assert status == "done", logs
        for marker in ("SEEN", "READ", "ENVLEAK", "SIGNALLED", "WROTE"):
            assert f"\n{marker} " not in f"\n{logs}" and f"\n{marker}\n" not in f"\n{logs}\n", logs
        env_lines = logs.split("ENV-BEGIN\n", 1)[1].split("\nENV-END", 1)[0].splitlines()
        names = {line.split("=", 1)[0] for line in env_lines} - {"PWD", "SHLVL", "_", "OLDPWD"}
        assert names == {"PATH", "HOME", "LANG", "PYTHONUNBUFFERED", "MINE", "MY_SECRET", "DSTACK_RUN_NAME",
                         "DSTACK_RUN_ID", "DSTACK_JOB_ID", "DSTACK_REPO_ID", "DSTACK_WORKING_DIR", "DSTACK_GPUS_NUM",
                         "DSTACK_GPUS_PER_NODE", "DSTACK_NODES_NUM", "DSTACK_NODE_RANK"}, env_lines
        pids = int(logs.split("PIDS ", 1)[1].split()[0])
        assert pids < 10, logs  # only the sandbox's own processes
        if os.geteuid() == 0:
            assert "UID 65534" in logs  # a root server runs jobs as nobody

    assert server.proc.poll() is None
    assert not os.path.exists(f"{server_dir}/pwned")
    with server.api(ADMIN_TOKEN) as admin:
        assert admin.get("/api/users").json() == users_before
    assert oct(os.stat(server_dir).st_mode & 0o777) == "0o700"
    for name in os.listdir(f"{server_dir}/data"):
        path = f"{server_dir}/data/{name}"
        if os.path.isfile(path):
            assert os.stat(path).st_mode & 0o077 == 0, path


def test_projects_of_non_admins_start_without_backends(env: Env, server: Server) -> None:
    with server.api() as admin:
        token = admin.post("/api/users", json={"name": "nina"}).json()["token"]
        # An admin's new project gets the local backend.
        assert [b["type"] for b in admin.post("/api/projects", json={"name": "adm"}).json()["backends"]] == ["local"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as api:
        created = api.post("/api/projects", json={"name": "ninas"})
        assert created.status_code == 201 and created.json()["backends"] == []
        response = api.post("/api/projects/ninas/backends", json={"type": "local"})
        assert response.status_code == 403
        assert "only global admins can add the local backend" in response.json()["error"]["message"]
        plan = api.post("/api/projects/ninas/runs/plan", json={"configuration": {"type": "task", "commands": ["id"]},
                                                               "repo_id": "x"})
        assert plan.status_code == 400 and "no backends" in plan.json()["error"]["message"].lower(), plan.text


def test_project_creation_can_be_limited_to_admins(env: Env) -> None:
    env.extra["DSTACK_PROJECT_CREATION"] = "admins"
    srv = Server(env).start()
    try:
        with srv.api() as admin:
            token = admin.post("/api/users", json={"name": "olga"}).json()["token"]
            assert admin.post("/api/projects", json={"name": "fine"}).status_code == 201
        response = httpx.post(f"{srv.url}/api/projects", json={"name": "nope"},
                              headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403 and "only global admins" in response.json()["error"]["message"]
    finally:
        srv.stop()


def test_without_isolation_only_admins_run_local_jobs(env: Env, tmp_path) -> None:  # noqa: ANN001
    """No bubblewrap on PATH: members are refused with the reason; the admin still runs jobs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3", "bash", "sh", "env"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env.extra["PATH"] = f"{os.path.dirname(os.path.realpath(shutil.which('python3') or 'python3'))}:{bin_dir}"
    srv = Server(env).start()
    try:
        with srv.api() as admin:
            token = admin.post("/api/users", json={"name": "uma"}).json()["token"]
            admin.put("/api/projects/main/members", json={"user": "uma", "role": "user"}).raise_for_status()
            plan = admin.post("/api/projects/main/runs/plan", json={"configuration": {
                "type": "task", "commands": ["id"]}, "repo_id": "x"})
            assert plan.status_code == 200, plan.text
        response = httpx.post(f"{srv.url}/api/projects/main/runs/plan", headers={"Authorization": f"Bearer {token}"},
                              json={"configuration": {"type": "task", "commands": ["id"]}, "repo_id": "x"})
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "cannot isolate jobs" in message and "bubblewrap" in message, message
    finally:
        srv.stop()
    subprocess.run(["true"])
