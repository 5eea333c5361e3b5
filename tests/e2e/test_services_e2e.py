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
    # How long a request waits for a ready replica: a cold start here takes seconds.
    env.extra["DSTACK_SERVICE_COLD_START_TIMEOUT"] = "30"
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
        ps = env.cli("ps", cwd=repo).stdout
        assert "replica 0" in ps and "replica 1" in ps and ps.count("running · ready") == 2, ps

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


def _replica_count(api: httpx.Client, name: str) -> tuple[int, int, str]:
    run = _service(api, name)
    info = run["service"]
    return len(info["replicas"]), info["ready"], f"{run['status']} {run['reason']}"


def test_autoscaling_up_and_down_and_scale_to_zero_with_cold_start(env: Env, service_server: Server,
                                                                   registry: Registry) -> None:
    image = registry.push_busybox("dstack-test/web:2")
    repo = _repo(env)
    # Times as written, tenths of them here (DSTACK_SERVICE_TIME_SCALE=0.1): a 6 s RPS window, up after
    # 2 s, down after 4 s.
    extra = "scaling: {metric: rps, target: 2, scale_up_delay: 20s, scale_down_delay: 40s}\n"
    out = _apply(env, repo, SERVICE.format(name="auto", image=image, replicas="0..2", extra=extra, body="a"))
    assert "scaled to zero; the first request starts a replica" in out.stdout or "submitted" in out.stdout
    url = f"{service_server.url}/proxy/services/main/auto/"
    headers = {"Authorization": f"Bearer {env.token()}"}
    with service_server.api() as api, httpx.Client(headers=headers, timeout=120) as web:
        wait_for(lambda: _service(api, "auto")["reason"] == "scaled to zero", 30, message="scaled to zero")
        assert _replica_count(api, "auto")[0] == 0
        # Cold start: the first request waits for a replica, then is answered.
        started = time.monotonic()
        first = web.get(url)
        assert first.status_code == 200 and first.text.startswith("a "), first.text
        assert _replica_count(api, "auto")[:2] == (1, 1)
        cold = time.monotonic() - started
        # Sustained load over the target (2 RPS per replica): a second replica.
        peak = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and peak < 2:
            assert web.get(url).status_code == 200
            peak = max(peak, _replica_count(api, "auto")[1])
            time.sleep(0.08)
        assert peak == 2, _service(api, "auto")["service"]
        # Idle: back down, to zero.
        wait_for(lambda: _replica_count(api, "auto")[0] == 0, 90, interval=0.5, message="scaled back to zero",
                 diagnostics=lambda: json.dumps(_service(api, "auto")["service"]))
        assert _service(api, "auto")["status"] == "running"
        # And up again on the next request.
        assert web.get(url).status_code == 200
    assert cold < 120


FAKE_MODEL = r'''
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        for i in range(5):
            chunk = {"object": "chat.completion.chunk", "model": request["model"], "produced": time.time(),
                     "seen_auth": self.headers.get("authorization"),
                     "choices": [{"index": 0, "delta": {"content": f"w{i} "}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.4)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
'''


def test_model_endpoint_streams_sse_as_produced(env: Env, server: Server) -> None:
    repo = _repo(env)
    (repo / "fake_openai.py").write_text(FAKE_MODEL)
    # Two replicas without an image on the local backend would share one port: refused, saying why.
    (repo / ".dstack.yml").write_text("type: service\nport: 8013\nreplicas: 2\ncommands: [python3 x.py]\n")
    refused = env.cli("apply", "-y", cwd=repo)
    assert refused.returncode != 0 and "would share this machine's network and port" in refused.stderr + refused.stdout
    _apply(env, repo, """type: service
name: llm
port: 8013
auth: false
model: fake-model
commands:
  - python3 fake_openai.py 8013
resources: {cpu: 1.., memory: 0.1GB..}
""")
    with server.api() as api:
        wait_for(lambda: _ready(api, "llm", 1), 120, interval=0.3, message="a ready replica",
                 diagnostics=lambda: json.dumps(_service(api, "llm"), indent=1)[-3000:])
        assert _service(api, "llm")["service"]["model_url"] == "/proxy/models/main/"
    base = f"{server.url}/proxy/models/main"
    # `auth: false`: no token needed, at the service's URL or the model endpoint.
    assert httpx.get(f"{server.url}/proxy/services/main/llm/").text == "ok\n"
    listed = httpx.get(f"{base}/models").json()
    assert [m["id"] for m in listed["data"]] == ["fake-model"]
    missing = httpx.post(f"{base}/chat/completions", json={"model": "other", "messages": []})
    assert missing.status_code == 404 and "fake-model" in missing.text
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=30,
                      json={"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                      headers={"Authorization": "Bearer not-for-the-app"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append((time.time(), json.loads(line[6:])))
    assert [c["choices"][0]["delta"]["content"] for _, c in arrivals] == [f"w{i} " for i in range(5)]
    # Each chunk reached the client before the app produced the next one: nothing was buffered.
    for (arrived, _), (_, following) in zip(arrivals, arrivals[1:], strict=False):
        assert arrived < following["produced"], arrivals
    # `auth: false` passes the caller's headers through as they are.
    assert arrivals[0][1]["seen_auth"] == "Bearer not-for-the-app"
    # `dstack stop` drains: an answer being streamed when the stop comes is finished first.
    words: list[str] = []
    with httpx.stream("POST", f"{base}/chat/completions", timeout=30,
                      json={"model": "fake-model", "stream": True, "messages": []}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                words.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
                if len(words) == 1:
                    with server.api() as api:
                        api.post("/api/projects/main/runs/llm/stop", json={"abort": False}).raise_for_status()
            elif line == "data: [DONE]":
                words.append("[DONE]")
    assert words == [f"w{i} " for i in range(5)] + ["[DONE]"]
    with server.api() as api:
        wait_for(lambda: _service(api, "llm")["status"] == "stopped", 60, message="stopped after the drain")
        # The proxy forgets it at its next look at the DB (a request meanwhile: 503 "no longer running").
        wait_for(lambda: httpx.post(f"{base}/chat/completions", json={"model": "fake-model"}).status_code == 404,
                 10, message="the model gone")


def test_probes_gate_traffic_until_they_pass(env: Env, service_server: Server, registry: Registry) -> None:
    image = registry.push_busybox("dstack-test/web:3")
    repo = _repo(env)
    extra = "probes: [{url: /health, interval: 1s, ready_after: 2}]\n"
    _apply(env, repo, SERVICE.format(name="probed", image=image, replicas=1, extra=extra, body="p"))
    url = f"{service_server.url}/proxy/services/main/probed/"
    with service_server.api() as api:
        wait_for(lambda: _service(api, "probed")["status"] == "running", 120, interval=0.3, message="running")
        job = _service(api, "probed")["jobs"][0]["id"]
        # The app answers (/ is there) but /health is not: not ready; a request waits for the
        # cold-start timeout (30 s here, many probe intervals), then gets 503 saying why.
        waited = httpx.get(url, headers={"Authorization": f"Bearer {env.token()}"}, timeout=60)
        assert waited.status_code == 503 and "no ready replica" in waited.text and "/health" in waited.text
        assert _service(api, "probed")["service"]["ready"] == 0
        subprocess.run(["podman", "exec", _container_of(job), "sh", "-c", "echo ok > /www/health"], check=True,
                       capture_output=True)
        wait_for(lambda: _service(api, "probed")["service"]["ready"] == 1, 30, interval=0.3, message="ready")
        assert httpx.get(url, headers={"Authorization": f"Bearer {env.token()}"}).text.startswith("p ")


def test_apply_waits_for_the_replica_then_follows_its_logs(env: Env, server: Server) -> None:
    """`dstack apply` without -d: the URL, the replicas coming up, then replica 0's logs; Ctrl-C
    detaches and the service goes on."""
    import signal

    repo = _repo(env)
    (repo / "app.py").write_text(
        "import http.server, sys\nprint('app listening', flush=True)\n"
        "http.server.ThreadingHTTPServer(('0.0.0.0', 8014), http.server.SimpleHTTPRequestHandler).serve_forever()\n")
    (repo / ".dstack.yml").write_text("type: service\nname: fg\nport: 8014\ncommands: [python3 app.py]\n"
                                      "resources: {cpu: 1.., memory: 0.1GB..}\n")
    proc = env.popen_cli("apply", "-y", cwd=repo)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "app listening" in line:
                break
        out = "".join(lines)
        assert f"{server.url}/proxy/services/main/fg/" in out and "1/1 replicas ready" in out, out
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0 and "Detached; fg goes on" in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    with server.api() as api:
        assert _service(api, "fg")["status"] == "running"
        api.post("/api/projects/main/runs/fg/stop", json={"abort": True}).raise_for_status()
