"""Upstream's runtime fields on the local backend, end to end: `files`, `repos` (a local repo, a URL
served by `git daemon`, a private one over HTTP that needs registered credentials), `working_dir`,
`setup`, `-e`, `priority`, `tags`, `schedule` (a cron that fires within the test) and
`utilization_policy` (GPU samples from a file: this machine has no GPU)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness import Env, Server, free_port, need, run_logs, wait_for


def _git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd,
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def _make_repo(path: Path) -> tuple[str, str]:
    """A repo with `main` (one commit) and `dev` (two): returns dev's two commit hashes."""
    path.mkdir(parents=True)
    _git("init", "-q", "-b", "main", cwd=path)
    (path / "VERSION").write_text("main\n")
    _git("add", ".", cwd=path)
    _git("commit", "-qm", "main", cwd=path)
    _git("checkout", "-q", "-b", "dev", cwd=path)
    (path / "VERSION").write_text("dev-1\n")
    _git("commit", "-qam", "dev 1", cwd=path)
    first = _git("rev-parse", "HEAD", cwd=path)
    (path / "VERSION").write_text("dev-2\n")
    _git("commit", "-qam", "dev 2", cwd=path)
    return first, _git("rev-parse", "HEAD", cwd=path)


def _finished(server: Server, name: str, timeout: float = 120) -> dict:
    with server.api() as api:
        return wait_for(lambda: (r := api.get(f"/api/projects/main/runs/{name}").json()).get("status") in
                        ("done", "failed", "stopped", "terminated") and r, timeout, message=f"{name} to finish")


def _logs(server: Server, name: str) -> str:
    with server.api() as api:
        return run_logs(api, name)


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    need(shutil.which("git") is not None, "git is not installed")
    base = tmp_path / "served"
    base.mkdir()
    port = free_port()
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
                             f"--port={port}", f"--base-path={base}", str(base)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"git://127.0.0.1:{port}", base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class _PrivateGit(BaseHTTPRequestHandler):
    """Git's smart HTTP (`git http-backend`) behind basic auth: a private repo host."""

    root: Path
    credentials: str

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self) -> None:
        if self.headers.get("Authorization") != f"Basic {self.credentials}":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {"GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
               "QUERY_STRING": query, "REQUEST_METHOD": self.command, "CONTENT_TYPE": self.headers.get(
                   "Content-Type", ""), "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": "u"}
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(": ")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve


@pytest.fixture
def private_git(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    need(shutil.which("git") is not None, "git is not installed")
    root = tmp_path / "private"
    root.mkdir()
    handler = type("Handler", (_PrivateGit,), {"root": root,
                                                "credentials": base64.b64encode(b"robot:s3cret-token").decode()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()


def test_files_working_dir_setup_and_env_overrides(env: Env, server: Server, repo: Path) -> None:
    dataset = env.home / "dataset"
    (dataset / "deep").mkdir(parents=True)
    (dataset / "deep" / "a.txt").write_text("dataset-a\n")
    (dataset / ".dstackignore").write_text("*.tmp\n")
    (dataset / "skip.tmp").write_text("ignored\n")
    (env.home / "token.txt").write_text("token-body\n")
    (repo / ".dstack.yml").write_text(
        "type: task\nname: files\n"
        "files:\n  - ../dataset:data\n  - ~/token.txt\n  - ../dataset/deep/a.txt:/data/elsewhere/a.txt\n"
        "working_dir: /workflow/sub\n"
        "setup:\n  - echo SETUP-RAN\n"
        "env:\n  - FOO=from-file\n"
        "commands:\n"
        "  - pwd\n  - cat /workflow/sub/data/deep/a.txt\n  - cat ~/token.txt\n  - cat /data/elsewhere/a.txt\n"
        "  - test ! -e data/skip.tmp && echo IGNORED-SKIPPED\n"
        "  - echo \"FOO=$FOO BAR=$BAR DIR=$DSTACK_WORKING_DIR\"\n")
    result = env.cli("apply", "-y", "-e", "FOO=from-cli", "-e", "BAR=bar", cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    logs = _logs(server, "files")
    for line in ("SETUP-RAN", "/workflow/sub", "dataset-a", "token-body", "IGNORED-SKIPPED",
                 "FOO=from-cli BAR=bar DIR=/workflow/sub"):
        assert line in logs, logs
    assert logs.count("dataset-a") == 2, logs
    # A system directory of the machine is read-only to a job without `image`: said before it starts.
    (repo / "sys.yml").write_text("type: task\nname: sys\nfiles: ['../token.txt:/opt/t.txt']\ncommands: [echo hi]\n")
    result = env.cli("apply", "-y", "-f", "sys.yml", cwd=repo)
    assert result.returncode != 0, result.stdout
    run = _finished(server, "sys")
    assert run["status"] == "failed" and "files: /opt/t.txt is in one of this machine's system directories" in \
        run["reason"], run
    # A missing local file is an error before anything is submitted.
    (repo / "missing.yml").write_text("type: task\nfiles: [../nope.txt]\ncommands: [echo hi]\n")
    result = env.cli("apply", "-y", "-f", "missing.yml", cwd=repo)
    assert result.returncode != 0 and "files[0]: ../nope.txt" in result.stderr and "does not exist" in result.stderr


def test_repos_local_url_branch_hash_and_private(env: Env, server: Server, repo: Path,
                                                 git_daemon: tuple[str, Path],
                                                 private_git: tuple[str, Path]) -> None:
    local = env.home / "proj"
    _make_repo(local)
    (repo / "local.yml").write_text(
        "type: task\nname: local-repo\nrepos: ['../proj:/my-repo']\n"
        "commands:\n  - cat /my-repo/VERSION\n  - echo \"REPO=$DSTACK_REPO_DIR\"\n  - ls -A /workflow | wc -l\n")
    assert env.cli("apply", "-y", "-f", "local.yml", cwd=repo).returncode == 0
    logs = _logs(server, "local-repo")
    assert "dev-2" in logs and "REPO=/my-repo" in logs, logs

    url, served = git_daemon
    first, _ = _make_repo(served / "pub")
    (repo / "url.yml").write_text(
        f"type: task\nname: url-repo\nrepos:\n  - url: {url}/pub\n    branch: dev\n    hash: {first}\n"
        "single_branch: true\ncommands:\n  - cat VERSION\n  - git branch -a | wc -l\n")
    result = env.cli("apply", "-y", "-f", "url.yml", cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dev-1" in _logs(server, "url-repo")

    private_url, private_root = private_git
    _make_repo(private_root / "secret.git")
    (repo / "private.yml").write_text(
        f"type: task\nname: private-repo\nrepos: ['{private_url}/secret.git']\ncommands:\n  - cat VERSION\n"
        "  - env | grep -ci s3cret || true\n")
    result = env.cli("apply", "-y", "-f", "private.yml", cwd=repo)
    assert result.returncode != 0
    run = _finished(server, "private-repo")
    assert run["status"] == "failed" and f"cannot clone {private_url}/secret.git" in run["reason"], run
    result = env.cli("init", "--repo", f"{private_url}/secret.git", "--token", "s3cret-token",
                     "--username", "robot", cwd=repo)
    assert result.returncode == 0, result.stderr
    with server.api() as api:
        assert api.get("/api/projects/main/repos/credentials").json() == [f"{private_url}/secret"]
    result = env.cli("apply", "-y", "-f", "private.yml", cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    logs = _logs(server, "private-repo")
    # The clone worked, and the token reached neither the job's environment nor its logs.
    assert logs.splitlines()[-2:] == ["dev-2", "0"], logs  # the default branch (HEAD: dev)


def test_priority_orders_the_queue_and_tags_stay_on_the_run(env: Env, server: Server, repo: Path) -> None:
    """Three runs wait for capacity behind a blocker (the machine's only slot: `cpu` asks for all cores
    and the local backend counts what its jobs hold); the highest priority starts first. The blocker
    runs until it is stopped, once all three wait: a blocker that ended by itself could end, under
    load, before the last of them was submitted, and the test would check the submission order."""
    with server.api() as api:
        cores = api.post("/api/projects/main/runs/plan", json={
            "configuration": {"type": "task", "commands": [":"]}, "repo_id": "x"}).json()["offers"][0][
            "resources"]["cpus"]
    blocker = repo / "blocker.yml"
    blocker.write_text(f"type: task\nname: blocker\nresources: {{cpu: {cores}}}\ncommands: [sleep 600]\n")
    assert env.cli("apply", "-y", "-d", "-f", "blocker.yml", cwd=repo).returncode == 0
    with server.api() as api:
        wait_for(lambda: api.get("/api/projects/main/runs/blocker").json()["status"] == "running", 60,
                 message="the blocker to run")
    for name, priority in (("low", 10), ("high", 90), ("mid", 50)):
        (repo / f"{name}.yml").write_text(
            f"type: task\nname: {name}\npriority: {priority}\nresources: {{cpu: {cores}}}\n"
            "retry: {on_events: [no-capacity], duration: 10m}\ntags: {team: ml, tier: " + name + "}\n"
            "commands: [date +%s.%N]\n")
        assert env.cli("apply", "-y", "-d", "-f", f"{name}.yml", cwd=repo).returncode == 0
    with server.api() as api:
        def all_wait() -> bool:
            runs = [api.get(f"/api/projects/main/runs/{name}").json() for name in ("low", "high", "mid")]
            return all(r["status"] == "submitted" and (r.get("reason") or "").startswith("waiting for capacity")
                       for r in runs)
        wait_for(all_wait, 60, message="the three runs to wait for capacity")
    assert env.cli("stop", "blocker", cwd=repo).returncode == 0
    started = {}
    for name in ("low", "high", "mid"):
        run = _finished(server, name, timeout=180)
        assert run["status"] == "done", run
        started[name] = float(_logs(server, name).splitlines()[-1])  # the job's own clock: when it ran
        assert run["spec"]["configuration"]["tags"] == {"team": "ml", "tier": name}
    assert started["high"] < started["mid"] < started["low"], started


def test_schedule_fires_and_waits_for_the_next_time(env: Env, server: Server, repo: Path) -> None:
    (repo / ".dstack.yml").write_text("type: task\nname: nightly\nschedule:\n  cron: '* * * * *'\n"
                                      "commands: [echo SCHEDULED-RUN]\n")
    result = env.cli("apply", "-y", cwd=repo)
    assert result.returncode == 0 and "scheduled: starts at" in result.stdout, result.stdout + result.stderr
    with server.api() as api:
        run = api.get("/api/projects/main/runs/nightly").json()
        assert run["status"] == "submitted" and run["reason"].startswith("scheduled: starts at"), run

        def ran_and_rescheduled() -> bool:
            current = api.get("/api/projects/main/runs/nightly").json()
            return len(current["jobs"]) >= 2 and current["jobs"][0]["status"] == "done" and \
                current["status"] == "submitted"
        wait_for(ran_and_rescheduled, 150, message="the scheduled job to run, and the next to be scheduled")
        logs = api.get("/api/projects/main/runs/nightly/logs", params={"submission": 0}).json()
        assert any(e["message"] == "SCHEDULED-RUN" for e in logs["events"]), logs
        first = api.get("/api/projects/main/runs/nightly").json()["jobs"][0]
        assert first["started_at"][17:19] < "30", first  # at the top of a minute (cron has no seconds)
    assert env.cli("stop", "nightly", cwd=repo).returncode == 0
    assert _finished(server, "nightly", timeout=60)["status"] == "stopped"


@pytest.fixture
def gpu_metrics(env: Env) -> Path:
    path = env.home / "gpu-metrics.jsonl"
    env.extra.update({"DSTACK_GPU_METRICS_FILE": str(path), "DSTACK_METRICS_INTERVAL": "1"})
    return path


def test_utilization_policy_stops_an_idle_gpu_run(env: Env, gpu_metrics: Path, repo: Path) -> None:
    """Samples from a file (the pluggable source; another collector's samples, with their times):
    six minutes under 10% on GPU 1 stop the run under a 5-minute window; a busy GPU does not."""
    now = time.time()
    lines = [{"t": now - 360 + i * 10, "gpus": [{"util": 80, "memory_used_mb": 1000, "memory_total_mb": 24576},
                                                {"util": 3, "memory_used_mb": 10, "memory_total_mb": 24576}]}
             for i in range(37)]
    gpu_metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    server = Server(env).start()
    try:
        result = env.cli("init", cwd=repo)
        (repo / ".dstack.yml").write_text("type: task\nname: idle\nutilization_policy:\n  min_gpu_utilization: 10\n"
                                          "  time_window: 5m\ncommands: [echo started, sleep 300]\n")
        assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0, result.stderr
        run = _finished(server, "idle", timeout=90)
        assert run["status"] == "stopped" and run["reason"] == \
            "utilization policy: a GPU stayed under 10% for 5m", run
        shown = env.cli("metrics", "idle", cwd=repo)
        assert shown.returncode == 0 and "80%" in shown.stdout and "3%" in shown.stdout, shown.stdout

        busy = [{**line, "gpus": line["gpus"][:1]} for line in lines]
        gpu_metrics.write_text("".join(json.dumps(line) + "\n" for line in busy))
        (repo / "busy.yml").write_text("type: task\nname: busy\nutilization_policy:\n  min_gpu_utilization: 10\n"
                                       "  time_window: 5m\ncommands: [sleep 6, echo still-here]\n")
        assert env.cli("apply", "-y", "-f", "busy.yml", cwd=repo).returncode == 0
        assert _finished(server, "busy")["status"] == "done"
    finally:
        server.stop()


def test_instance_volumes_keep_data_between_runs_for_admins_only(env: Env, server: Server, repo: Path) -> None:
    # Outside the server user's HOME (which no job sees), where the sandbox's user can reach it.
    volume = Path(tempfile.mkdtemp(prefix="dstack-test-volume-", dir="/tmp")) / "data"
    volume.parent.chmod(0o755)
    try:
        _instance_volumes(env, server, repo, volume)
    finally:
        shutil.rmtree(volume.parent, ignore_errors=True)


def _instance_volumes(env: Env, server: Server, repo: Path, volume: Path) -> None:
    (repo / ".dstack.yml").write_text(
        f"type: task\nname: writer\nvolumes: ['{volume}:/data']\ncommands:\n"
        "  - echo persisted-$DSTACK_RUN_NAME > /data/out.txt\n")
    result = env.cli("apply", "-y", cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (volume / "out.txt").read_text() == "persisted-writer\n"
    (repo / "reader.yml").write_text(
        f"type: task\nname: reader\nvolumes:\n  - instance_path: {volume}\n    path: /mnt/in\ncommands:\n"
        "  - cat /mnt/in/out.txt\n")
    assert env.cli("apply", "-y", "-f", "reader.yml", cwd=repo).returncode == 0
    assert "persisted-writer" in _logs(server, "reader")
    # The server's own directory is never a volume; a network volume must exist first.
    (repo / "bad.yml").write_text(f"type: task\nvolumes: ['{env.server_dir}/data:/data']\ncommands: [ls /data]\n")
    result = env.cli("apply", "-y", "-f", "bad.yml", cwd=repo)
    assert result.returncode != 0 and "holds the server's own files" in result.stderr, result.stderr
    (repo / "net.yml").write_text("type: task\nvolumes: ['my-volume:/data']\ncommands: [ls /data]\n")
    result = env.cli("apply", "-y", "-f", "net.yml", cwd=repo)
    assert result.returncode != 0 and "no volume 'my-volume' in project 'main'" in result.stderr, result.stderr
    # And the local backend has none to create.
    (repo / "volume.yml").write_text("type: volume\nname: my-volume\nbackend: local\nregion: here\nsize: 1GB\n")
    result = env.cli("apply", "-y", "-f", "volume.yml", cwd=repo)
    assert result.returncode != 0 and "the local backend has no network volumes" in result.stderr, result.stderr
    # A member who is not a global admin may not mount the server machine's directories.
    with server.api() as api:
        token = api.post("/api/users", json={"name": "member"}).json()["token"]
        api.put("/api/projects/main/members", json={"user": "member", "role": "user"}).raise_for_status()
        plan = api.post("/api/projects/main/runs/plan", headers={"Authorization": f"Bearer {token}"}, json={
            "repo_id": "x", "configuration": {"type": "task", "commands": ["true"], "volumes": [f"{volume}:/data"]}})
    assert plan.status_code == 400 and "only the server's admins may" in plan.text, plan.text
