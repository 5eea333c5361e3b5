"""A whole task on the AWS backend: moto in server mode plays the AWS APIs (IAM enforcement on),
network-namespace VM hosts play the instances, and the server's user holds only the seed's
least-privilege policy. Every AWS call the server makes is recorded and evaluated against it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.backends.aws.iam_policy import optional_statements, policy
from tests.aws_harness import ACCOUNT, MotoAWS
from tests.e2e.aws_stack import BUCKET, REGION, SECRET, Stack, make_stack
from tests.ec2_stand_ins import CapacityReservations
from tests.harness import Env, Server, wait_for
from tests.iam_eval import violations
from tests.stock_tree import STOCK_PYTHON_IMAGE, stock_tree


@pytest.fixture
def stack(request: pytest.FixtureRequest, env: Env, aws: MotoAWS) -> Iterator[Stack]:
    yield from make_stack(request, env, aws)

TASK = """\
type: task
name: {name}
commands:
  - echo "hello from the instance"
  - python3 -c "import os, hashlib; print('token sha', hashlib.sha256(os.environ['HF_TOKEN'].encode()).hexdigest()[:16])"
  - 'echo "leak attempt: $HF_TOKEN"'
  - mkdir -p out && echo artifact-body > out/a.txt
artifacts: [out]
resources:
  cpu: 2..
  memory: 4GB..
tags:
  team: research
  cost-center: ml-42
availability_zones: [us-east-1b]
"""


def test_aws_task_end_to_end_with_least_privilege_policy(stack: Stack) -> None:
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="aws-task"))
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # The plan: AWS offers with the catalog's price; the cheapest first.
    plan_row = next(line for line in out.splitlines() if line.startswith("1 "))
    assert "aws" in plan_row and REGION in plan_row and "t3.medium" in plan_row and "$0.0416" in plan_row
    # Logs streamed live through CloudWatch, the secret reached the job and was masked.
    assert "hello from the instance" in out
    # No `image`: the job ran in the server's default image for its Python (the stock tree, cached).
    assert f"dstack: image {STOCK_PYTHON_IMAGE} is cached" in out
    assert f"token sha {hashlib.sha256(SECRET.encode()).hexdigest()[:16]}" in out
    assert "leak attempt: ********" in out and SECRET not in out

    [instance] = stack.instances()
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["dstack_bucket"] == BUCKET and tags["dstack_project"] == "cloud" and tags["dstack_run"] == "aws-task"
    # The run's `tags` on the instance (and its volume), and the zone it asked for.
    assert tags["team"] == "research" and tags["cost-center"] == "ml-42"
    assert instance["Placement"]["AvailabilityZone"] == "us-east-1b"
    booted = stack.cloud.booted[instance["InstanceId"]]  # as the instance saw itself while it ran
    assert booted.profile.endswith(":instance-profile/dstack_role_dstack_e2e_bucket")
    default_subnets = {s["SubnetId"] for s in stack.aws.client("ec2", REGION).describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]}
    assert instance["SubnetId"] in default_subnets
    # Nothing is let in but SSH (for `dstack attach`, through the instance's sshd; key-only).
    [group] = stack.aws.client("ec2", REGION).describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"dstack-{BUCKET}"]}])["SecurityGroups"]
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in group["IpPermissions"]] == [("tcp", 22, 22)]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group["GroupId"]]
    # Torn down at the end, and nothing else is left running.
    wait_for(lambda: all(i["State"]["Name"] == "terminated" for i in stack.instances()), 20,
             message="the instance to be terminated")
    wait_for(lambda: not booted.host.pids(), 10, message="the VM host's processes to end")

    # Artifacts are in the bucket; the secret is in no bucket object.
    s3 = stack.aws.client("s3", REGION)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    artifact = next(k for k in keys if k.endswith("/artifacts/out/a.txt"))
    assert s3.get_object(Bucket=BUCKET, Key=artifact)["Body"].read() == b"artifact-body\n"
    for key in keys:
        assert SECRET.encode() not in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key
    # ...nor in any API response or the server's log.
    with stack.server.api() as api:
        for path in ("/api/projects/cloud", "/api/projects/cloud/runs/aws-task", "/api/projects/cloud/runs/aws-task/logs",
                     "/api/projects/cloud/secrets", "/api/projects/cloud/runs?all=true"):
            assert SECRET not in api.get(path).text, path
    assert SECRET not in stack.server.output()
    # It lives in Secrets Manager under the name the policy allows.
    value = stack.aws.client("secretsmanager", REGION).get_secret_value(
        SecretId=f"/dstack/{BUCKET}/secrets/cloud/HF_TOKEN")["SecretString"]
    assert value == SECRET

    # The agent's own log is in the runners group.
    logs = stack.aws.client("logs", REGION)
    runner_events = logs.filter_log_events(logGroupName=f"/dstack/runners/{BUCKET}/cloud")["events"]
    assert any("job running" in e["message"] for e in runner_events)
    assert any(e["message"] == "finished" for e in runner_events)
    # ...and it ran on the stock image's Python 3.9 with no site-packages (no pip, boto3 or psutil),
    # fetched by user data that installs nothing.
    started = next(e["message"] for e in runner_events if e["message"].startswith("started on"))
    stock_python = ["chroot", str(stock_tree()), "python3"]  # the tree the VM host booted from
    version = subprocess.run([*stock_python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert f"Python {version})" in started and version.startswith("3.9"), started
    for module in ("pip", "boto3", "psutil", "pydantic"):
        assert subprocess.run([*stock_python, "-c", f"import {module}"], capture_output=True).returncode != 0
    user_data = (booted.host.workdir / "user-data.sh").read_text()
    assert "pip" not in user_data and "boto3" not in user_data and len(user_data.encode()) < 16 * 1024
    # Only the host's agent may get the role's credentials: IMDSv2 with a hop limit of 1.
    run_call = next(c for c in stack.calls() if c["operation"] == "RunInstances")
    assert run_call["params"]["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1,
                                                     "HttpEndpoint": "enabled"}

    # Least privilege: every call the server made is allowed by the seed's policy alone.
    calls = stack.calls()
    operations = {c["operation"] for c in calls}
    assert {"RunInstances", "TerminateInstances", "CreateRole", "CreateLogGroup", "FilterLogEvents",
            "CreateSecret", "PutObject"} <= operations
    assert violations(policy(BUCKET), calls, ACCOUNT, stack.instance_tags) == []

    # A field the seed's policy cannot serve is refused at plan time naming the optional statement.
    with stack.server.api() as api:
        body = api.post("/api/projects/cloud/runs/plan", json={"repo_id": "x", "configuration": {
            "type": "task", "commands": ["true"], "reservation": "cr-0123456789abcdef0"}}).json()["error"]
    assert body["code"] == "no_offers" and "lacks ec2:DescribeCapacityReservations" in body["message"]
    assert "--with reservations" in body["message"]


def test_a_run_launches_into_its_capacity_reservation(stack: Stack) -> None:
    """`reservation`: with the optional statement, the reservation's type and zone narrow the offers,
    and the instance is launched into it."""
    reservations = CapacityReservations(stack.aws, user="dstack-user", region=REGION)  # moto has none
    reservations.reservations["cr-0a1b2c3d4e5f60718"] = {"type": "t3.large", "zone": "us-east-1c", "count": 1,
                                                         "state": "active"}
    stack.proxy.rule = reservations.rule
    stack.aws.client("iam").put_user_policy(
        UserName="dstack-user", PolicyName="dstack-reservations",
        PolicyDocument=json.dumps({"Version": "2012-10-17",
                                   "Statement": optional_statements(BUCKET, ["reservations"])}))
    (stack.repo / ".dstack.yml").write_text("type: task\nname: reserved\ncommands: [echo in-the-reservation]\n"
                                            "reservation: cr-0a1b2c3d4e5f60718\n")
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0 and "in-the-reservation" in result.stdout, result.stdout + result.stderr
    plan_rows = [line for line in result.stdout.splitlines() if line[:2].strip().isdigit()]
    assert plan_rows and all("t3.large" in row for row in plan_rows), plan_rows
    [launch] = [c for c in stack.calls() if c["operation"] == "RunInstances"]
    assert launch["params"]["CapacityReservationSpecification"] == {
        "CapacityReservationTarget": {"CapacityReservationId": "cr-0a1b2c3d4e5f60718"}}
    assert launch["params"]["Placement"]["AvailabilityZone"] == "us-east-1c"
    # One not there is refused at plan time, saying so.
    (stack.repo / ".dstack.yml").write_text("type: task\nname: gone\ncommands: [echo x]\n"
                                            "reservation: cr-00000000000000000\n")
    refused = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=60)
    assert refused.returncode != 0 and "cr-00000000000000000 is not a capacity reservation" in refused.stderr
    assert violations(policy(BUCKET, ["reservations"]), stack.calls(), ACCOUNT, stack.resource_tags) == []


def test_capacity_error_fails_over_to_the_next_offer(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.instances import InstanceBackend

    original = InstanceBackend.run_instances

    def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):  # noqa: ANN001, ANN202
        if kwargs.get("instance_type") == "t3.medium":
            raise EC2ClientError("InsufficientInstanceCapacity",
                                 "We currently do not have sufficient t3.medium capacity in the AZ you requested")
        return original(self, image_id, count, user_data, security_group_names, **kwargs)

    monkeypatch.setattr(InstanceBackend, "run_instances", run_instances)
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="failover"))
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    [instance] = stack.instances()
    assert instance["InstanceType"] != "t3.medium"
    with stack.server.api() as api:
        attempts = api.get("/api/projects/cloud/runs/failover").json()["jobs"][0]["attempts"]
    assert [(a["instance_type"], a["ok"]) for a in attempts] == [("t3.medium", False), (instance["InstanceType"], True)]
    assert attempts[0]["reason"].startswith("InsufficientInstanceCapacity")
    ps = stack.env.cli("ps", "-a", "-v", cwd=stack.repo).stdout
    assert "failed: InsufficientInstanceCapacity" in ps and "launched" in ps
    import httpx

    with httpx.Client(base_url=stack.server.url, cookies={"dstack_token": stack.env.token()}) as web:
        page = web.get("/projects/cloud/runs/failover").text
    assert "failed: InsufficientInstanceCapacity" in page and "t3.medium" in page


def test_reaper_terminates_instances_no_job_owns(stack: Stack) -> None:
    ec2 = stack.aws.client("ec2", REGION)
    image = ec2.describe_images(Owners=["self"])["Images"][0]["ImageId"]
    orphan = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "dstack_bucket", "Value": BUCKET},
                                              {"Key": "dstack_project", "Value": "cloud"}]}])["Instances"][0]
    unrelated = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]

    def state(instance_id: str) -> str:
        return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]

    wait_for(lambda: state(orphan["InstanceId"]) == "terminated", 15, message="the orphan to be reaped")
    time.sleep(1)
    assert state(unrelated["InstanceId"]) == "running"
    assert "terminated orphaned aws instance " + orphan["InstanceId"] in stack.server.output()


def test_instance_terminated_behind_our_back_fails_interrupted_and_retries(stack: Stack) -> None:
    (stack.repo / ".dstack.yml").write_text(
        TASK.format(name="spotty").replace("  - mkdir -p out", "  - sleep 20\n  - mkdir -p out")
        + "retry:\n  on_events: [interruption]\n  duration: 10m\n")
    assert stack.env.cli("apply", "-y", "-d", cwd=stack.repo).returncode == 0
    wait_for(lambda: stack.cloud.booted, 30, message="the instance to boot")
    [first] = list(stack.cloud.booted)
    with stack.server.api() as api:
        wait_for(lambda: api.get("/api/projects/cloud/runs/spotty").json()["status"] == "running", 30)
        stack.aws.client("ec2", REGION).terminate_instances(InstanceIds=[first])  # as a spot reclaim would
        run = wait_for(lambda: len((r := api.get("/api/projects/cloud/runs/spotty").json())["jobs"]) == 2 and r,
                       20, message="the job to be resubmitted")
    assert run["jobs"][0]["status"] == "failed"
    assert run["jobs"][0]["reason"].startswith("interrupted: the instance is ")


@pytest.mark.parametrize("stack", ["default-env", "default-profile"], indirect=True)
def test_aws_default_credentials_end_to_end(stack: Stack) -> None:
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="default-creds"))
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello from the instance" in result.stdout
    wait_for(lambda: all(i["State"]["Name"] == "terminated" for i in stack.instances()), 20)
    assert violations(policy(BUCKET), stack.calls(), ACCOUNT, stack.instance_tags) == []
    with stack.server.api() as api:  # nothing secret was stored: the machine's credentials were used
        config = next(b for b in api.get("/api/projects/cloud").json()["backends"] if b["type"] == "aws")["config"]
    assert config["credentials"] == {"type": "default"}


@pytest.mark.parametrize("step", ["before-launch", "after-launch", "after-record"])
def test_aws_job_survives_a_server_crash(stack: Stack, step: str) -> None:
    """The server dies around RunInstances: on restart the instance is found by its dstack_job_id
    tag and adopted (never launched twice, never left unowned), and the job finishes."""
    stack.server.stop()
    stack.env.extra.update({"DSTACK_FAILPOINT": step, "DSTACK_CLAIM_LEASE": "2"})
    crashed = Server(stack.env, port=stack.server.port).start()
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="crashy"))
    stack.env.cli("apply", "-y", "-d", cwd=stack.repo, timeout=120)
    assert crashed.proc is not None
    crashed.proc.wait(timeout=120)
    assert crashed.proc.returncode == 137, crashed.output()[-3000:]
    stack.env.extra.pop("DSTACK_FAILPOINT")
    stack.server = Server(stack.env, port=crashed.port).start()
    with stack.server.api() as api:
        status = wait_for(lambda: (r := api.get("/api/projects/cloud/runs/crashy").json())["status"]
                          in ("done", "failed", "stopped") and r["status"], timeout=180, message="the run to finish")
        run = api.get("/api/projects/cloud/runs/crashy").json()
        assert status == "done", (run["reason"], [j["history"] for j in run["jobs"]],
                                  stack.server.output()[-3000:])
        job_id = api.get("/api/projects/cloud/runs/crashy").json()["jobs"][-1]["id"]
    launched = [i for i in stack.instances() if stack.instance_tags(i["InstanceId"]).get("dstack_job_id") == job_id]
    assert len(launched) == 1, launched  # exactly one instance, whatever the crash point
    wait_for(lambda: all(i["State"]["Name"] in ("shutting-down", "terminated") for i in stack.instances()),
             timeout=60, message="every instance terminated")
    if step == "after-launch":
        assert "adopting instance " + launched[0]["InstanceId"] in stack.server.output()


def test_aws_image_task_runs_in_a_container_on_the_instance(stack: Stack, tmp_path: Path) -> None:
    """An `image` job on an AWS instance: the agent pulls it with the instance's runtime (Podman here)
    from a registry, runs the commands in it with the code and the secret, and saves the artifact."""
    from tests.registry import registry_with_busybox

    with registry_with_busybox(tmp_path / "registry", "dstack-test/aws-box:1") as (registry, image):
        registry.serve_vms(stack.cloud)
        (stack.repo / ".dstack.yml").write_text(f"""type: task
name: aws-box
image: {image}
commands:
  - echo "in the container at $(pwd)"
  - 'echo "token: $HF_TOKEN"'
  - test ! -e /opt/dstack && echo "no agent files"
  - mkdir -p out && echo boxed > out/a.txt
  - exit 3
artifacts: [out]
resources:
  cpu: 2..
  memory: 4GB..
""")
        result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=120)
        out = result.stdout
        assert result.returncode != 0 and "aws-box: failed (exit code 3)" in out, out + result.stderr
        assert f"dstack: pulled image {image}" in out and "in the container at /workflow" in out
        assert "token: ********" in out and SECRET not in out and "no agent files" in out
        # The pull's progress is in the run's events (the instance has Docker's API: layer by layer).
        with stack.server.api() as api:
            history = api.get("/api/projects/cloud/runs/aws-box").json()["jobs"][0]["history"]
        pulls = [e["reason"] for e in history if e["status"] == "provisioning" and e["reason"]]
        assert any(r.startswith(f"pulling image {image} (") for r in pulls), history
        s3 = stack.aws.client("s3", REGION)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
        artifact = next(k for k in keys if k.endswith("/artifacts/out/a.txt"))
        assert s3.get_object(Bucket=BUCKET, Key=artifact)["Body"].read() == b"boxed\n"


def test_aws_attach_lands_in_the_container(stack: Stack, tmp_path: Path) -> None:
    """`dstack attach` on AWS: the security group lets SSH in; through the instance's sshd (jump only,
    user ec2-user) to the job's sshd, into the container; forwards, reconnect, pinned host keys,
    members only, `inactivity_duration`."""
    from tests.e2e.attach_scenario import check_attach
    from tests.registry import registry_with_busybox

    with registry_with_busybox(tmp_path / "registry", "dstack-test/aws-dev:1") as (registry, image):
        registry.serve_vms(stack.cloud)
        check_attach(env=stack.env, server=stack.server, project="cloud", repo=stack.repo, image=image,
                     run="aws-dev", secret=("HF_TOKEN", SECRET))
    ec2 = stack.aws.client("ec2", REGION)
    [group] = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"dstack-{BUCKET}"]}])[
        "SecurityGroups"]
    assert [(p["FromPort"], p["ToPort"]) for p in group["IpPermissions"]] == [(22, 22)]
