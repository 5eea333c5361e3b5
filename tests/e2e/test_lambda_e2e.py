"""Whole runs on the Lambda backend: the spec-validating Lambda fake plays the API, VM hosts
play the instances, moto plays S3. The instance holds no AWS keys, only presigned access."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.aws_harness import MotoAWS
from tests.e2e.lambda_stack import BUCKET, Stack, lambda_config, make_stack
from tests.harness import Env, wait_for
from tests.lambda_fake import FakeLambda


@pytest.fixture
def stack(env: Env, aws: MotoAWS, lambda_fake: FakeLambda) -> Iterator[Stack]:
    yield from make_stack(env, aws, lambda_fake)


TASK = """\
type: task
name: {name}
commands:
  - echo "hello from lambda"
  - 'echo "secret: $WANDB_KEY"'
  - mkdir -p out && echo artifact-body > out/a.txt
  - sleep {sleep}
artifacts: [out]
resources:
  gpu: A10
{extra}"""


def test_lambda_task_end_to_end(stack: Stack) -> None:
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="lam", sleep=6, extra=""))
    result = stack.env.cli("apply", "-y", "-d", cwd=stack.repo)
    assert result.returncode == 0, result.stdout + result.stderr
    plan_row = next(line for line in result.stdout.splitlines() if line.startswith("1 "))
    assert "lambda" in plan_row and "us-west-1" in plan_row and "gpu_1x_a10" in plan_row and "$0.7500" in plan_row
    wait_for(lambda: stack.run("lam")["status"] == "running", 60, interval=0.3, message="the run to start")
    logs = wait_for(lambda: (out := stack.env.cli("logs", "lam", cwd=stack.repo).stdout) and "hello" in out and out,
                    20, interval=0.3, message="logs")
    assert "secret: ********" in logs and "wandb-secret-123" not in logs

    # `dstack attach` reaches the instance over SSH with the user's key.
    attached = stack.env.cli("attach", "lam", "--command", "echo attached-$(whoami)", cwd=stack.repo, timeout=60)
    assert attached.returncode == 0, attached.stderr
    assert "attached-root" in attached.stdout  # `ubuntu` is uid 0 inside the VM host
    # The host key is pinned from what the agent published: another key is refused, not accepted.
    s3 = stack.aws.client("s3")
    published = next(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]
                     if o["Key"].endswith("/host_keys.json"))
    genuine = s3.get_object(Bucket=BUCKET, Key=published)["Body"].read()
    other = stack.env.home / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    s3.put_object(Bucket=BUCKET, Key=published, Body=json.dumps(
        {"keys": [" ".join(other.with_suffix(".pub").read_text().split()[:2])]}).encode())
    refused = stack.env.cli("attach", "lam", "--command", "echo should-not-run", cwd=stack.repo, timeout=60)
    assert refused.returncode != 0 and "should-not-run" not in refused.stdout
    assert "Host key verification failed" in refused.stderr, refused.stderr
    s3.put_object(Bucket=BUCKET, Key=published, Body=genuine)

    # No AWS keys on the instance: neither on its disk nor in its processes' environments.
    [(iid, host)] = stack.vms.hosts.items()
    snapshot = host.snapshot()
    files = [p for p in snapshot.rglob("*") if p.is_file() and p.name != "environ.txt"]
    for path in [*files, *host.workdir.glob("*.sh")]:
        text = path.read_bytes().decode(errors="replace")
        assert stack.keys[1] not in text, path
        assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_secret_access_key" not in text, path
    # The secrets file the user data wrote was read by the agent and removed.
    assert not [p for p in files if p.name == "secrets.json"]
    environ = (snapshot / "environ.txt").read_text()
    assert "AWS_ACCESS_KEY_ID" not in environ and "AWS_SECRET" not in environ and stack.keys[1] not in environ
    # Its access is scoped to its own job's prefix, and expires.
    access = json.loads(next(snapshot.rglob("access.json")).read_text())
    policy = json.loads(base64.b64decode(access["post"]["fields"]["policy"]))
    prefix = access["post"]["prefix"]
    assert ["starts-with", "$key", prefix] in policy["conditions"] and prefix.count("/jobs/") == 1
    assert policy["expiration"] and all(k.startswith(prefix) or k.startswith("dstack/code/") for k in access["get"])

    run = wait_for(lambda: (r := stack.run("lam"))["status"] in ("done", "failed") and r, 60, interval=0.5,
                   message="the run to finish")
    assert run["status"] == "done", run
    s3 = stack.aws.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    artifact = next(k for k in keys if k.endswith("/artifacts/out/a.txt"))
    assert s3.get_object(Bucket=BUCKET, Key=artifact)["Body"].read() == b"artifact-body\n"
    wait_for(lambda: stack.fake.instances[iid]["status"] == "terminated", 20, message="the instance to terminate")


def test_capacity_failover_and_a_429_storm(stack: Stack) -> None:
    stack.fake.set_capacity("gpu_1x_a10", "us-east-1", 1)
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    stack.fake.inject("launch", "insufficient-capacity")
    stack.fake.inject("any", "429", times=6)
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="failover", sleep=0, extra=""))
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    attempts = stack.run("failover")["jobs"][0]["attempts"]
    assert [(a["region"], a["ok"]) for a in attempts] == [("us-east-1", False), ("us-west-1", True)]
    assert "insufficient-capacity" in attempts[0]["reason"]
    # Every injected 429 was answered and gone through; the fake's own 1 request/s limit (20 ms apart
    # here, refused under 10) may add one when a loaded machine delays a request until the next is due.
    assert [fault["times"] for fault in stack.fake.faults if fault["code"] == "429"] == [0]
    assert sum(1 for _, _, status in stack.fake.requests if status == 429) >= 6


def test_preempted_instance_fails_interrupted_and_is_resubmitted(stack: Stack) -> None:
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 2)
    (stack.repo / ".dstack.yml").write_text(TASK.format(
        name="preempt", sleep=8, extra="retry:\n  on_events: [interruption]\n  duration: 10m\n"))
    assert stack.env.cli("apply", "-y", "-d", cwd=stack.repo).returncode == 0
    wait_for(lambda: stack.run("preempt")["status"] == "running", 60, interval=0.3, message="the run to start")
    [first] = [i for i in stack.fake.instances]
    stack.fake.preempt(first)
    run = wait_for(lambda: (r := stack.run("preempt"))["status"] == "done" and r, 90, interval=0.5,
                   message="the resubmitted run to finish")
    assert [j["status"] for j in run["jobs"]] == ["failed", "done"]
    assert run["jobs"][0]["reason"] == "interrupted"


def test_presigned_access_is_renewed_over_ssh(stack: Stack) -> None:
    # With max_duration 1h the first access expires within 2 days, so it is renewed (to 7 days) at once.
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="long", sleep=6, extra="max_duration: 1h\n"))
    assert stack.env.cli("apply", "-y", "-d", cwd=stack.repo).returncode == 0
    wait_for(lambda: stack.run("long")["status"] == "running", 60, interval=0.3, message="the run to start")
    [host] = stack.vms.hosts.values()

    def expires_at() -> str:
        snapshot = host.snapshot()
        return json.loads(next(snapshot.rglob("access.json")).read_text())["expires_at"]

    from datetime import UTC, datetime, timedelta

    renewed = wait_for(lambda: (e := expires_at()) > (datetime.now(UTC) + timedelta(days=5)).isoformat() and e,
                       30, interval=0.5, message="the access to be renewed")
    assert renewed
    run = wait_for(lambda: (r := stack.run("long"))["status"] in ("done", "failed") and r, 60, interval=0.5)
    assert run["status"] == "done", run  # the agent went on with the renewed access


def test_quota_exceeded_stops_trying_that_type_and_says_so(stack: Stack) -> None:
    stack.fake.set_capacity("gpu_1x_a10", "us-east-1", 1)
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    stack.fake.set_capacity("gpu_1x_a100", "us-east-1", 1)
    stack.fake.inject("launch", "quota-exceeded")
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="quota", sleep=0, extra="").replace("gpu: A10", "gpu: 24GB.."))
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    attempts = stack.run("quota")["jobs"][0]["attempts"]
    assert [(a["instance_type"], a["region"], a["ok"]) for a in attempts] == [
        ("gpu_1x_a10", "us-east-1", False), ("gpu_1x_a100", "us-east-1", True)]
    assert attempts[0]["reason"].startswith("quota exceeded for gpu_1x_a10")
    with stack.server.api() as api:  # the next plan leaves the type out for a while
        spec = {"configuration": {"type": "task", "commands": ["x"], "resources": {"gpu": "24GB.."}},
                "repo_id": stack.run("quota")["spec"]["repo_id"]}
        offers = api.post("/api/projects/gpu/runs/plan", json=spec).json()["offers"]
    assert offers and all(o["instance_type"] != "gpu_1x_a10" for o in offers)


def test_provider_errors_and_vanishing_capacity_move_on(stack: Stack) -> None:
    stack.fake.set_capacity("gpu_1x_a10", "us-east-1", 1)
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    stack.fake.set_capacity("gpu_1x_a100", "us-east-1", 1)
    stack.fake.inject("launch", "provider/internal-unavailable")
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="flaky", sleep=0, extra="").replace("gpu: A10", "gpu: 24GB.."))
    assert stack.env.cli("apply", "-y", cwd=stack.repo, timeout=120).returncode == 0
    attempts = stack.run("flaky")["jobs"][0]["attempts"]
    assert [a["ok"] for a in attempts] == [False, True]
    assert attempts[0]["reason"].startswith("provider/internal-unavailable")
    # Capacity listed, then gone by the time of the launch: every offer fails, and the run says why.
    stack.fake.vanish_capacity_after_listing = True
    result = stack.env.cli("apply", "-y", "-f", ".dstack.yml", cwd=stack.repo, timeout=120)
    run = stack.run("flaky")
    assert result.returncode == 1 and run["status"] == "failed"
    assert "insufficient-capacity" in run["reason"]


def test_unhealthy_instance_fails_the_job_as_interrupted(stack: Stack) -> None:
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="sick", sleep=20, extra=""))
    assert stack.env.cli("apply", "-y", "-d", cwd=stack.repo).returncode == 0
    wait_for(lambda: stack.run("sick")["status"] == "running", 60, interval=0.3, message="the run to start")
    [iid] = list(stack.fake.instances)
    stack.fake.set_unhealthy(iid)
    run = wait_for(lambda: (r := stack.run("sick"))["status"] == "failed" and r, 20, interval=0.3)
    assert run["reason"].startswith("interrupted")
    wait_for(lambda: stack.fake.instances[iid]["status"] in ("terminating", "terminated"), 20,
             message="the unhealthy instance to be terminated")


def test_reaper_terminates_lambda_instances_no_job_owns(stack: Stack) -> None:
    import httpx

    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 2)
    stack.fake.ssh_keys.append({"id": "k1", "name": "someone", "public_key": "ssh-ed25519 AAAA someone"})
    headers = {"Authorization": "Bearer good-key"}
    launch = {"region_name": "us-west-1", "instance_type_name": "gpu_1x_a10", "ssh_key_names": ["someone"]}
    orphan = httpx.post(f"{stack.fake.url}/api/v1/instance-operations/launch", headers=headers, json={
        **launch, "tags": [{"key": "dstack-project", "value": "gpu"}, {"key": "dstack-job", "value": "gone"}]})
    # The fake enforces the launch rate limit (1 per 12 s, scaled): retry on 429.
    unrelated = wait_for(lambda: (r := httpx.post(f"{stack.fake.url}/api/v1/instance-operations/launch",
                                                  headers=headers, json=launch)).status_code == 200 and r, 20,
                         interval=0.1, message="the second launch")
    orphan_id, unrelated_id = orphan.json()["data"]["instance_ids"][0], unrelated.json()["data"]["instance_ids"][0]
    wait_for(lambda: stack.fake.instances[orphan_id]["status"] in ("terminating", "terminated"), 20,
             message="the orphan to be reaped")
    assert stack.fake.instances[unrelated_id]["status"] in ("booting", "active")


def test_spot_only_request_says_lambda_has_no_spot(stack: Stack) -> None:
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="spot", sleep=0, extra="spot_policy: spot\n"))
    result = stack.env.cli("apply", "-y", cwd=stack.repo)
    assert result.returncode == 1
    assert "Lambda Cloud has no spot instances" in result.stderr


def test_lambda_image_task_runs_in_a_container(stack: Stack, tmp_path: Path) -> None:
    """Lambda's image ships a container runtime: the agent pulls the job's image with it (Podman here)
    through the instance's presigned, key-less access, and runs the job in it."""
    from tests.registry import registry_with_busybox

    with registry_with_busybox(tmp_path / "registry", "dstack-test/lambda-box:1") as (registry, image):
        registry.serve_vms(stack.vms)
        stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
        (stack.repo / ".dstack.yml").write_text(
            f"type: task\nname: lam-box\nimage: {image}\ncommands:\n  - echo \"boxed on lambda in $(pwd)\"\n"
            "  - 'echo \"secret: $WANDB_KEY\"'\n  - mkdir -p out && echo boxed > out/a.txt\nartifacts: [out]\n"
            "resources:\n  gpu: A10\n")
        result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=240)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "boxed on lambda in /workflow" in result.stdout and "secret: ********" in result.stdout
        s3 = stack.aws.client("s3")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
        artifact = next(k for k in keys if k.endswith("/artifacts/out/a.txt"))
        assert s3.get_object(Bucket=BUCKET, Key=artifact)["Body"].read() == b"boxed\n"

        # A stop mid-run stops the container (the runtime's stop), and the run ends `stopped`.
        (stack.repo / ".dstack.yml").write_text(
            f"type: task\nname: lam-sleeper\nimage: {image}\ncommands:\n  - echo sleeping\n  - sleep 600\n"
            "resources:\n  gpu: A10\n")
        assert stack.env.cli("apply", "-y", "-d", cwd=stack.repo).returncode == 0
        wait_for(lambda: "sleeping" in stack.env.cli("logs", "lam-sleeper", cwd=stack.repo).stdout, 120,
                 message="the container to run")
        assert stack.env.cli("stop", "lam-sleeper", cwd=stack.repo).returncode == 0
        wait_for(lambda: stack.run("lam-sleeper")["status"] == "stopped", 60, message="the run to stop")


def test_lambda_attach_lands_in_the_container(stack: Stack, tmp_path: Path) -> None:
    """`dstack attach` on Lambda: through the instance's sshd (jump only) to the job's sshd, into the
    container; forwards, reconnect, pinned host keys, members only, `inactivity_duration`."""
    from tests.e2e.attach_scenario import check_attach
    from tests.registry import registry_with_busybox

    with registry_with_busybox(tmp_path / "registry", "dstack-test/lambda-dev:1") as (registry, image):
        registry.serve_vms(stack.vms)
        stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
        check_attach(env=stack.env, server=stack.server, project="gpu", repo=stack.repo, image=image,
                     run="lam-dev", secret=("WANDB_KEY", "wandb-secret-123"),
                     resources="resources:\n  gpu: A10\n")


def test_job_finishes_with_every_line_through_transient_bucket_errors(stack: Stack) -> None:
    """S3 answers 500 now and then and drops connections (as it does, rarely, for real): the agent's
    presigned calls retry, its heartbeats go on, and the job ends `done` with all its lines."""
    from tests.fault_proxy import S3_INTERNAL_ERROR, FaultProxy, every_nth, s3_refuses_sigv2

    errors, resets = every_nth(4, S3_INTERNAL_ERROR), every_nth(9, "reset")
    proxy = FaultProxy(stack.aws.port, lambda r: s3_refuses_sigv2(r) or errors(r) or resets(r))
    assert stack.vms.vm_aws_proxy is not None
    stack.vms.vm_aws_proxy.stop()
    stack.vms.vm_aws_proxy = proxy
    try:
        stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
        (stack.repo / ".dstack.yml").write_text(
            "type: task\nname: lam-flaky\ncommands:\n"
            "  - 'for i in $(seq 0 299); do echo \"line $i\"; sleep 0.01; done'\nresources:\n  gpu: A10\n")
        result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=240)
        assert result.returncode == 0, result.stdout + result.stderr
        assert proxy.faults >= 5, proxy.faults
        lines = stack.env.cli("logs", "lam-flaky", cwd=stack.repo).stdout.splitlines()
        assert [line for line in lines if line.startswith("line ")] == [f"line {i}" for i in range(300)]
    finally:
        proxy.stop()


def test_slow_boot_does_not_count_against_the_provisioning_timeout(stack: Stack) -> None:
    """8-GPU Lambda instances boot for 10-15 minutes: the provisioning timeout (12 s here) counts from
    `active`, so an instance booting for 20 s still runs its job (it failed "did not start in time")."""
    stack.fake.boot_seconds = 20
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    (stack.repo / ".dstack.yml").write_text("type: task\nname: lam-slow\ncommands: [echo booted]\n"
                                            "resources:\n  gpu: A10\n")
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0 and "booted" in result.stdout, result.stdout + result.stderr


def test_a_bucket_outside_us_east_1_works_and_a_wrong_signing_region_is_refused(stack: Stack) -> None:
    """A bucket in eu-west-1: the agent's presigned access is signed for the bucket's region (S3
    refuses another region, and the global endpoint would redirect a young bucket; the stand-in
    refuses as S3 does)."""
    import boto3
    import httpx

    eu_bucket = "dstack-lambda-eu-bucket"
    stack.aws.create_bucket(eu_bucket, "eu-west-1")
    from botocore.config import Config

    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{stack.aws.port}",
                      aws_access_key_id="testing", aws_secret_access_key="testing",
                      config=Config(signature_version="s3v4"))  # SigV4, but scoped to the wrong region
    s3.put_object(Bucket=eu_bucket, Key="probe", Body=b"x")
    wrong = s3.generate_presigned_url("get_object", Params={"Bucket": eu_bucket, "Key": "probe"}, ExpiresIn=60)
    assert stack.vms.vm_aws_proxy is not None
    refused = httpx.get(wrong.replace(f":{stack.aws.port}/", f":{stack.vms.vm_aws_proxy.port}/"))
    assert refused.status_code == 400 and "expecting 'eu-west-1'" in refused.text

    with stack.server.api() as api:
        api.post("/api/projects", json={"name": "eu"}).raise_for_status()
        api.delete("/api/projects/eu/backends/local").raise_for_status()
        response = api.post("/api/projects/eu/backends",
                            json=lambda_config(stack.fake, stack.keys, bucket=eu_bucket))
        assert response.status_code == 201, response.text
    repo = stack.env.home / "eu-repo"
    repo.mkdir()
    assert stack.env.cli("init", "--project", "eu", cwd=repo).returncode == 0
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    (repo / ".dstack.yml").write_text("type: task\nname: lam-eu\ncommands: [echo from the eu bucket]\n"
                                      "resources:\n  gpu: A10\n")
    result = stack.env.cli("apply", "-y", cwd=repo, timeout=180)
    assert result.returncode == 0 and "from the eu bucket" in result.stdout, result.stdout + result.stderr
