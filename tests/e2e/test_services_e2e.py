"""Services on the local backend: replicas behind the server's proxy, failover, rolling updates,
autoscaling (time-scaled: DSTACK_SERVICE_TIME_SCALE), scale to zero, auth, and a streaming model."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Env, Server, wait_for
from tests.registry import Registry

SERVICE = """type: service
name: {name}
image: {image}
port: 8000
replicas: {replicas}
{extra}commands:
  - mkdir -p /www
  - echo "{body} $DSTACK_JOB_ID" > /www/index.html
  - exec busybox httpd -f -p 8000 -h /www
resources: {{cpu: 1.., memory: 0.1GB..}}
"""


@pytest.fixture
def service_server(env: Env, registry: Registry) -> Iterator[Server]:
    env.extra.update(registry.env)
    # Autoscaling's minute-long window and delays, in tenths: the same code, a test-sized clock.
    env.extra["DSTACK_SERVICE_TIME_SCALE"] = "0.1"
    srv = Server(env).start()
    yield srv
    srv.stop()


def _apply(env: Env, repo: Path, yml: str) -> subprocess.CompletedProcess[str]:
    (repo / ".dstack.yml").write_text(yml)
    result = env.cli("apply", "-y", "-d", cwd=repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _repo(env: Env) -> Path:
    repo = env.home / "repo"
    repo.mkdir(exist_ok=True)
    assert env.cli("init", cwd=repo).returncode == 0
    return repo


def _service(api: httpx.Client, name: str) -> dict[str, Any]:
    return api.get(f"/api/projects/main/runs/{name}").json()


def _ready(api: httpx.Client, name: str, count: int, deployment: int | None = None) -> bool:
    run = _service(api, name)
    info = run["service"] or {}
    replicas = info.get("replicas") or []
    wanted = [r for r in replicas if r["ready"] and (deployment is None or r["deployment"] == deployment)]
    return len(wanted) == count and len(replicas) == count


def _container_of(job_id: str) -> str:
    out = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    return next(n for n in out.split() if job_id[:8] in n or job_id in n)


def test_replicas_failover_rolling_update_and_auth(env: Env, service_server: Server, registry: Registry) -> None:
    image = registry.push_busybox("dstack-test/web:1")
    repo = _repo(env)
    result = _apply(env, repo, SERVICE.format(name="web", image=image, replicas=2, extra="", body="v1"))
    url = f"{service_server.url}/proxy/services/main/web/"
    assert url in result.stdout, result.stdout
    token = env.token()
    with service_server.api() as api, httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as web:
        wait_for(lambda: _ready(api, "web", 2), 180, interval=0.5, message="2 ready replicas",
                 diagnostics=lambda: json.dumps(_service(api, "web"), indent=1)[-3000:])
        # Round robin: both replicas answer; the proxy strips the caller's token.
        bodies = Counter(web.get(url).text.strip() for _ in range(10))
        assert len(bodies) == 2 and all(b.startswith("v1 ") for b in bodies), bodies
        jobs = [b.split()[1] for b in bodies]

        # Auth: no token 401, a non-member's 403, a bad one 401.
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
        outsider = api.post("/api/users", json={"name": "outsider"}).json()["token"]
        assert httpx.get(url, headers={"Authorization": f"Bearer {outsider}"}).status_code == 403
        assert web.get(f"{service_server.url}/proxy/services/main/nope/").status_code == 404

        # A replica killed: traffic moves to the other one, no 5xx beyond one in-flight request.
        subprocess.run(["podman", "kill", _container_of(jobs[0])], capture_output=True, check=True)
        codes = Counter(web.get(url).status_code for _ in range(30))
        assert codes[200] >= 29 and sum(n for c, n in codes.items() if c >= 500) <= 1, codes
        # ... and the service replaces it.
        wait_for(lambda: _ready(api, "web", 2) and jobs[0] not in {
            web.get(url).text.split()[-1] for _ in range(6)}, 180, interval=0.5, message="a replacement replica")

        # Re-apply with a new body: replicas roll over under a light load with no failed request.
        failures: list[str] = []
        seen: Counter[str] = Counter()
        stop = threading.Event()

        def load() -> None:
            deadline = time.monotonic() + 240  # bounded, whatever happens
            with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        response = client.get(url)
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        seen[response.text.split()[0]] += 1
                    time.sleep(0.05)

        thread = threading.Thread(target=load)
        thread.start()
        try:
            out = _apply(env, repo, SERVICE.format(name="web", image=image, replicas=2, extra="", body="v2"))
            assert "deployment 1" in out.stdout, out.stdout
            wait_for(lambda: _ready(api, "web", 2, deployment=1), 240, interval=0.5, message="rolled over",
                     diagnostics=lambda: json.dumps(_service(api, "web")["service"], indent=1))
            wait_for(lambda: seen["v2"] >= 10, 30, message="v2 answers")
        finally:
            stop.set()
            thread.join()
        assert not failures, failures[:5]
        assert seen["v1"] > 0 and seen["v2"] >= 10
        assert {web.get(url).text.split()[0] for _ in range(6)} == {"v2"}

        # Stop: the service ends, its URL answers 404.
        assert env.cli("stop", "web", cwd=repo).returncode == 0
        wait_for(lambda: _service(api, "web")["status"] == "stopped", 60, message="stopped")
        wait_for(lambda: web.get(url).status_code == 404, 10, message="404 once stopped")
