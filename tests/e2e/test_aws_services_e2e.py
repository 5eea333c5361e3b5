"""A service on AWS (moto + VM hosts): each replica on its own instance, reached by the server's proxy
through an SSH tunnel it keeps (instance sshd as the jump, the job's sshd, host keys pinned); the
instances open no port but SSH."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.aws_harness import MotoAWS
from tests.e2e.aws_stack import BUCKET, REGION, Stack, make_stack
from tests.harness import Env, wait_for


@pytest.fixture
def stack(request: pytest.FixtureRequest, env: Env, aws: MotoAWS) -> Iterator[Stack]:
    yield from make_stack(request, env, aws)


def _tunnels(server_pid: int) -> list[list[str]]:
    """The server's live `ssh -L` processes (a killed one is a zombie until the server reaps it)."""
    found = []
    for proc in psutil.Process(server_pid).children(recursive=True):
        try:
            if proc.name() == "ssh" and proc.status() != psutil.STATUS_ZOMBIE and "-L" in proc.cmdline():
                found.append(proc.cmdline())
        except psutil.Error:
            continue
    return found


def test_aws_service_replicas_are_reached_through_ssh_tunnels(stack: Stack, tmp_path: Path) -> None:
    from tests.registry import registry_with_busybox

    with registry_with_busybox(tmp_path / "registry", "dstack-test/aws-web:1") as (registry, image):
        registry.serve_vms(stack.cloud)
        (stack.repo / ".dstack.yml").write_text(f"""type: service
name: aws-web
image: {image}
port: 8000
replicas: 2
commands:
  - mkdir -p /www
  - echo "hello from $DSTACK_JOB_ID" > /www/index.html
  - exec busybox httpd -f -p 8000 -h /www
resources:
  cpu: 2..
  memory: 4GB..
""")
        result = stack.env.cli("apply", "-y", "-d", cwd=stack.repo, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        url = f"{stack.server.url}/proxy/services/cloud/aws-web/"
        with stack.server.api() as api:
            def service() -> dict:
                return api.get("/api/projects/cloud/runs/aws-web").json()

            wait_for(lambda: service()["service"]["ready"] == 2, 300, interval=0.5, message="2 ready replicas",
                     diagnostics=lambda: json.dumps(service(), indent=1)[-4000:])
            headers = {"Authorization": f"Bearer {stack.env.token()}"}
            answers = Counter(httpx.get(url, headers=headers, timeout=30).text.split()[-1] for _ in range(8))
            jobs = {j["id"] for j in service()["jobs"]}
            assert set(answers) == jobs, answers
            # Through SSH: one `ssh -N -L` per replica, jumping through the instance's sshd.
            tunnels = _tunnels(stack.server.proc.pid)
            assert len(tunnels) == 2, tunnels
            assert all("-N" in t and any(a.endswith(":8000") for a in t) for t in tunnels)
            # A tunnel that dies is brought back.
            psutil.Process(next(p.pid for p in psutil.Process(stack.server.proc.pid).children(recursive=True)
                                if p.name() == "ssh" and "-L" in p.cmdline())).kill()
            killed_at = time.monotonic()
            wait_for(lambda: len(_tunnels(stack.server.proc.pid)) == 2 and all(
                httpx.get(url, headers=headers, timeout=30).status_code == 200 for _ in range(4)), 60,
                interval=0.5, message="the tunnel back and every request answered")
            assert time.monotonic() - killed_at < 60
            assert stack.env.cli("stop", "aws-web", cwd=stack.repo).returncode == 0
            wait_for(lambda: service()["status"] == "stopped", 120, message="stopped")
            wait_for(lambda: not _tunnels(stack.server.proc.pid), 30, message="tunnels closed")
    ec2 = stack.aws.client("ec2", REGION)
    [group] = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"dstack-{BUCKET}"]}])[
        "SecurityGroups"]
    assert [(p["FromPort"], p["ToPort"]) for p in group["IpPermissions"]] == [(22, 22)]
    wait_for(lambda: all(i["State"]["Name"] == "terminated" for i in stack.instances()), 60,
             message="instances terminated")
