"""A cloud fleet on AWS (moto + VM hosts): `nodes: 2` provisioned once, reused by two consecutive
runs without a new RunInstances, terminated after its `idle_duration`; all under the seed's policy."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from dstack.backends.aws.iam_policy import OPTIONAL_ACTIONS, optional_statements, policy
from tests.aws_harness import ACCOUNT, MotoAWS
from tests.e2e.aws_stack import BUCKET, REGION, Stack, make_stack
from tests.ec2_stand_ins import PlacementGroups
from tests.harness import Env, wait_for
from tests.iam_eval import violations

FLEET = """\
type: fleet
name: warm
nodes: 2
resources:
  cpu: 2..
  memory: 4GB..
idle_duration: {idle}
"""

TASK = """\
type: task
name: {name}
commands:
  - echo "ran on $(hostname)"
resources:
  cpu: 2..
  memory: 4GB..
{extra}
"""


@pytest.fixture
def stack(request: pytest.FixtureRequest, env: Env, aws: MotoAWS) -> Iterator[Stack]:
    yield from make_stack(request, env, aws)


def _launches(stack: Stack) -> int:
    return sum(1 for c in stack.calls() if c["operation"] == "RunInstances")


def _fleet(stack: Stack, name: str = "warm") -> dict:
    with stack.server.api() as api:
        return api.get(f"/api/projects/cloud/fleets/{name}").json()


def test_cloud_fleet_is_provisioned_reused_and_terminated_when_idle(stack: Stack) -> None:
    (stack.repo / "fleet.dstack.yml").write_text(FLEET.format(idle="25s"))
    result = stack.env.cli("apply", "-y", "-f", "fleet.dstack.yml", cwd=stack.repo, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    # The plan (offers, nodes) and the instances, both idle once their agents answer.
    assert "Nodes" in result.stdout and "t3.medium" in result.stdout
    fleet = _fleet(stack)
    assert [i["status"] for i in fleet["instances"]] == ["idle", "idle"], fleet
    assert [i["name"] for i in fleet["instances"]] == ["warm-0", "warm-1"]
    assert _launches(stack) == 2
    # Applying it again changes nothing (as upstream); a changed one must be deleted first.
    again = stack.env.cli("apply", "-y", "-f", "fleet.dstack.yml", cwd=stack.repo, timeout=60)
    assert again.returncode == 0 and "exists with this configuration; nothing to do" in again.stdout
    (stack.repo / "bigger.yml").write_text(FLEET.format(idle="25s").replace("nodes: 2", "nodes: 3"))
    changed = stack.env.cli("apply", "-y", "-f", "bigger.yml", cwd=stack.repo, timeout=60)
    assert changed.returncode != 0 and "fleet 'warm' already exists" in changed.stderr, changed.stderr
    assert _launches(stack) == 2
    listing = stack.env.cli("fleet", cwd=stack.repo).stdout
    assert "warm-0" in listing and "warm-1" in listing and "idle" in listing
    fleet_tags = {stack.instance_tags(i["InstanceId"]).get("dstack_fleet") for i in stack.instances()}
    assert fleet_tags == {"warm"}
    with httpx.Client(base_url=stack.server.url, cookies={"dstack_token": stack.env.token()}) as web:
        html = web.get("/projects/cloud/fleets").text
    assert "warm-1" in html and "t3.medium" in html and "status-idle" in html

    # Two consecutive runs take the idle instances: no new launch.
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="first", extra="fleets: [warm]"))
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ran on" in result.stdout and "idle" in result.stdout  # the plan shows the idle instance
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="second", extra="creation_policy: reuse"))
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _launches(stack) == 2
    with stack.server.api() as api:
        attempts = [api.get(f"/api/projects/cloud/runs/{name}").json()["jobs"][0]["attempts"]
                    for name in ("first", "second")]
    assert all(a[-1]["reason"].startswith("reused fleet instance warm-") for a in attempts), attempts
    # Given back after each run: idle again, and deleting is refused only while busy.
    wait_for(lambda: [i["status"] for i in _fleet(stack)["instances"]] == ["idle", "idle"], 30,
             message="the instances to be idle again")
    assert stack.run_status("first") == "done" and stack.run_status("second") == "done"

    # Idle for the fleet's idle_duration: terminated, in EC2 too.
    wait_for(lambda: all(i["status"] == "terminated" for i in _fleet(stack)["instances"]), 120,
             message="the idle instances to be terminated")
    assert all(i["reason"] == "idle for the fleet's idle_duration" for i in _fleet(stack)["instances"])
    wait_for(lambda: {i["State"]["Name"] for i in stack.instances()} == {"terminated"}, 30,
             message="EC2 to report the instances terminated")
    # A run that may only reuse now finds nothing, and says so at plan time.
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=60)
    assert result.returncode != 0 and "no idle instance of the project's fleets" in result.stderr + result.stdout

    # Deleting the fleet ends it; everything the server called is in the seed's policy.
    assert stack.env.cli("delete", "warm", "-y", cwd=stack.repo).returncode == 0
    wait_for(lambda: stack.env.cli("fleet", cwd=stack.repo).stdout.startswith("No fleets"), 30,
             message="the fleet to be gone")
    assert violations(policy(BUCKET), stack.calls(), ACCOUNT, stack.instance_tags) == []


def test_deleting_a_fleet_terminates_its_instances_and_a_busy_one_is_refused(stack: Stack) -> None:
    (stack.repo / "fleet.dstack.yml").write_text(FLEET.format(idle="off").replace("nodes: 2", "nodes: 1"))
    result = stack.env.cli("apply", "-y", "-f", "fleet.dstack.yml", cwd=stack.repo, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    (stack.repo / ".dstack.yml").write_text(TASK.format(name="busy", extra="fleets: [warm]").replace(
        'echo "ran on $(hostname)"', "sleep 300"))
    assert stack.env.cli("apply", "-y", "-d", cwd=stack.repo, timeout=120).returncode == 0
    wait_for(lambda: stack.run_status("busy") == "running", 60, message="the run to start")
    assert _fleet(stack)["instances"][0]["runs"] == ["busy"]
    refused = stack.env.cli("delete", "warm", "-y", cwd=stack.repo)
    assert refused.returncode != 0 and "running busy" in refused.stderr and "dstack stop busy" in refused.stderr
    assert stack.env.cli("stop", "busy", cwd=stack.repo, timeout=90).returncode == 0
    wait_for(lambda: _fleet(stack)["instances"][0]["status"] == "idle", 60, message="the instance to be idle")
    assert stack.env.cli("delete", "warm", "-y", cwd=stack.repo).returncode == 0
    wait_for(lambda: {i["State"]["Name"] for i in stack.instances()} == {"terminated"}, 60,
             message="EC2 to report the instance terminated")
    assert _launches(stack) == 1


CLUSTER = """\
type: fleet
name: cluster
nodes: 2
placement: cluster
resources:
  cpu: 2..
  memory: 4GB..
idle_duration: off
"""

NODES = """\
type: task
name: {name}
nodes: 2
fleets: [cluster]
commands:
  - echo "rank $DSTACK_NODE_RANK of $DSTACK_NODES_NUM, master $DSTACK_MASTER_NODE_IP"
resources:
  cpu: 2..
  memory: 4GB..
"""


def test_cluster_fleet_needs_the_clusters_statement_and_serves_a_multinode_task(stack: Stack) -> None:
    placement = PlacementGroups(stack.aws, user="dstack-user", region=REGION)  # moto has no placement groups
    stack.proxy.rule, stack.proxy.transform = placement.rule, placement.observe
    (stack.repo / "cluster.yml").write_text(CLUSTER)
    refused = stack.env.cli("apply", "-y", "-f", "cluster.yml", cwd=stack.repo, timeout=60)
    message = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode != 0 and "placement: cluster" in message, message
    assert all(a in message for a in OPTIONAL_ACTIONS["clusters"][0]) and "--with clusters" in message, message
    stack.aws.client("iam").put_user_policy(
        UserName="dstack-user", PolicyName="dstack-clusters",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": optional_statements(BUCKET, ["clusters"])}))
    result = stack.env.cli("apply", "-y", "-f", "cluster.yml", cwd=stack.repo, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    fleet = _fleet(stack, "cluster")
    assert [i["status"] for i in fleet["instances"]] == ["idle", "idle"], fleet
    instances = stack.instances()
    [group] = placement.groups
    assert placement.groups[group]["strategy"] == "cluster" and placement.groups[group]["tags"] == {
        "dstack_bucket": BUCKET}
    assert placement.members[group] == {i["InstanceId"] for i in instances}
    assert len({i["Placement"]["AvailabilityZone"] for i in instances}) == 1
    assert len({i["InstanceType"] for i in instances}) == 1

    # A 2-node task takes both idle instances of the cluster fleet: no launch.
    (stack.repo / ".dstack.yml").write_text(NODES.format(name="on-cluster"))
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    logs = [stack.env.cli("logs", "on-cluster", "--job", str(n), cwd=stack.repo).stdout for n in (0, 1)]
    assert "rank 0 of 2" in logs[0] and "rank 1 of 2" in logs[1], logs
    masters = {line.rsplit(" ", 1)[1] for log in logs for line in log.splitlines() if "master" in line}
    assert len(masters) == 1 and masters <= {i["PrivateIpAddress"] for i in instances}, (masters, logs)
    assert _launches(stack) == 2

    # Deleting the fleet terminates its instances and then deletes its placement group.
    assert stack.env.cli("delete", "cluster", "-y", cwd=stack.repo).returncode == 0
    tags = dict(placement.groups[group]["tags"])
    wait_for(lambda: group not in placement.groups, 90, message="the placement group to be deleted")
    wait_for(lambda: _fleet_gone(stack, "cluster"), 30, message="the fleet to be gone")

    def resource_tags(resource: str) -> dict[str, str]:
        return tags if resource == group else stack.resource_tags(resource)

    assert violations(policy(BUCKET, ["clusters"]), stack.calls(), ACCOUNT, resource_tags) == []


def _fleet_gone(stack: Stack, name: str) -> bool:
    with stack.server.api() as api:
        return api.get(f"/api/projects/cloud/fleets/{name}").status_code == 404
