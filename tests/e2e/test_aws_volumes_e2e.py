"""EBS network volumes on AWS (moto + VM hosts, a loop device standing in for the disk): refused
under the seed's policy alone, naming the missing actions; created with the optional statement;
attached and mounted where the job says; what one run writes the next reads; deletion refused while
attached; every call within the seed's policy plus the documented statement."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from dstack.backends.aws.iam_policy import OPTIONAL_ACTIONS, optional_statements, policy
from tests.aws_harness import ACCOUNT, MotoAWS
from tests.e2e.aws_stack import BUCKET, REGION, Stack, make_stack
from tests.harness import Env, wait_for
from tests.iam_eval import violations

VOLUME = """\
type: volume
name: data
backend: aws
region: us-east-1
size: 2GB
"""

TASK = """\
type: task
name: {name}
commands:
{commands}
volumes:
  - name: data
    path: /data
resources:
  cpu: 2..
  memory: 4GB..
"""


@pytest.fixture
def stack(request: pytest.FixtureRequest, env: Env, aws: MotoAWS) -> Iterator[Stack]:
    yield from make_stack(request, env, aws)


def _grant_volumes(stack: Stack) -> None:
    stack.aws.client("iam").put_user_policy(
        UserName="dstack-user", PolicyName="dstack-volumes",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": optional_statements(BUCKET, ["volumes"])}))


def _volume(stack: Stack) -> dict:
    with stack.server.api() as api:
        return api.get("/api/projects/cloud/volumes/data").json()


def _task(stack: Stack, name: str, *commands: str) -> None:
    (stack.repo / ".dstack.yml").write_text(TASK.format(name=name, commands="\n".join(f"  - {c!r}" for c in commands)))


def test_ebs_volume_needs_the_optional_statement_and_keeps_data_between_runs(stack: Stack) -> None:
    (stack.repo / "volume.dstack.yml").write_text(VOLUME)
    # Under the seed's policy alone: refused before anything is created, naming what is missing.
    refused = stack.env.cli("apply", "-y", "-f", "volume.dstack.yml", cwd=stack.repo, timeout=60)
    assert refused.returncode != 0
    message = " ".join((refused.stderr + refused.stdout).split())
    for action in OPTIONAL_ACTIONS["volumes"][0]:
        assert action in message, message
    assert f"dstack aws iam-policy --bucket {BUCKET} --with volumes" in message
    assert not any(c["operation"] == "CreateVolume" and not c["params"].get("DryRun") for c in stack.calls())
    # The CLI prints that statement.
    printed = stack.env.cli("aws", "iam-policy", "--bucket", BUCKET, "--with", "volumes")
    assert printed.returncode == 0 and json.loads(printed.stdout) == policy(BUCKET, ["volumes"])

    _grant_volumes(stack)
    result = stack.env.cli("apply", "-y", "-f", "volume.dstack.yml", cwd=stack.repo, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    volume = _volume(stack)
    assert volume["status"] == "active" and volume["volume_id"].startswith("vol-") and volume["size_gb"] == 2
    [ebs] = stack.aws.client("ec2", REGION).describe_volumes(VolumeIds=[volume["volume_id"]])["Volumes"]
    tags = {t["Key"]: t["Value"] for t in ebs["Tags"]}
    assert tags["dstack_bucket"] == BUCKET and tags["dstack_volume"] == "data" and ebs["VolumeType"] == "gp3"
    listing = stack.env.cli("volume", cwd=stack.repo).stdout
    assert "data" in listing and volume["volume_id"] in listing and "active" in listing

    # The first run formats it and writes; the next one (another instance) reads it back.
    _task(stack, "writer", "mount | grep -c ' /data ' ", "echo kept-between-runs > /data/note.txt", "ls /data")
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note.txt" in result.stdout and "creating an ext4 file system" in result.stdout
    launches = [c for c in stack.calls() if c["operation"] == "RunInstances"]
    assert launches[-1]["params"]["Placement"]["AvailabilityZone"] == volume["availability_zone"]
    attaches = [c for c in stack.calls() if c["operation"] == "AttachVolume" and not c["params"].get("DryRun")]
    assert [a["params"]["Device"] for a in attaches] == ["/dev/sdf"]
    wait_for(lambda: _volume(stack)["attached_to"] == [], 60, message="the volume to be given back")

    _task(stack, "reader", "cat /data/note.txt", "sleep 300")
    assert stack.env.cli("apply", "-y", "-d", cwd=stack.repo, timeout=120).returncode == 0
    wait_for(lambda: stack.run_status("reader") == "running", 120, message="the reader to run")
    wait_for(lambda: "kept-between-runs" in stack.env.cli("logs", "reader", cwd=stack.repo).stdout, 60,
             message="the reader to print what the writer wrote")
    assert _volume(stack)["attached_to"] == ["reader"]
    with httpx.Client(base_url=stack.server.url, cookies={"dstack_token": stack.env.token()}) as web:
        html = web.get("/projects/cloud/volumes").text
    assert volume["volume_id"] in html and 'href="/projects/cloud/runs/reader"' in html and "2 GB" in html
    assert "creating an ext4" not in stack.env.cli("logs", "reader", cwd=stack.repo).stdout  # formatted once
    # Deleting it while attached is refused, naming the run.
    refused = stack.env.cli("volume", "delete", "data", "-y", cwd=stack.repo)
    assert refused.returncode != 0 and "attached to reader" in refused.stderr and "dstack stop reader" in refused.stderr
    assert stack.env.cli("stop", "reader", cwd=stack.repo, timeout=90).returncode == 0
    wait_for(lambda: _volume(stack)["attached_to"] == [], 90, message="the volume to be detached")
    wait_for(lambda: stack.aws.client("ec2", REGION).describe_volumes(
        VolumeIds=[volume["volume_id"]])["Volumes"][0]["State"] == "available", 60, message="EBS to say available")
    stack.volume_tags(volume["volume_id"])  # remembered for the policy check after it is gone
    assert stack.env.cli("delete", "data", "-y", cwd=stack.repo).returncode == 0
    wait_for(lambda: not stack.aws.client("ec2", REGION).describe_volumes(
        Filters=[{"Name": "volume-id", "Values": [volume["volume_id"]]}])["Volumes"], 60,
        message="the EBS volume to be deleted")

    # Every call is within the seed's policy plus the volumes statement; the seed's policy alone
    # misses exactly the volume actions (the refused apply's DryRun probes and the work after the grant).
    calls = stack.calls()
    assert violations(policy(BUCKET, ["volumes"]), calls, ACCOUNT, stack.resource_tags) == []
    outside = {v.split(" -> ")[1].split(" ")[0] for v in violations(policy(BUCKET), calls, ACCOUNT, stack.resource_tags)}
    assert outside == {*OPTIONAL_ACTIONS["volumes"][0], *OPTIONAL_ACTIONS["volumes"][1]}


def test_a_run_whose_volume_is_missing_or_unusable_is_refused_at_plan_time(stack: Stack) -> None:
    _task(stack, "orphan", "echo ok")
    refused = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=60)
    assert refused.returncode != 0 and "no volume 'data' in project 'cloud'" in refused.stderr
    assert "dstack apply -f volume.dstack.yml" in " ".join(refused.stderr.split())
    (stack.repo / "volume.dstack.yml").write_text(VOLUME)
    _grant_volumes(stack)
    assert stack.env.cli("apply", "-y", "-f", "volume.dstack.yml", cwd=stack.repo, timeout=60).returncode == 0
    # The run's other fields must agree with where the volume is.
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="elsewhere", commands="  - echo ok") + "regions: [eu-west-1]\n")
    refused = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=60)
    assert refused.returncode != 0 and "volumes are in us-east-1, which `regions` leaves out" in refused.stderr
    # The statement taken away again: the run is refused at plan time, naming the missing actions.
    stack.aws.client("iam").delete_user_policy(UserName="dstack-user", PolicyName="dstack-volumes")
    _task(stack, "denied", "echo ok")
    refused = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=60)
    message = " ".join(refused.stderr.split())
    assert refused.returncode != 0 and "lacks ec2:DescribeVolumes" in message and "--with volumes" in message
    assert not [c for c in stack.calls() if c["operation"] == "RunInstances"]
