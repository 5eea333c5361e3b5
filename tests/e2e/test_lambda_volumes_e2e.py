"""Lambda Cloud file systems as network volumes (the spec-validating fake, VM hosts): created in a
region, the run placed there and its launch naming the file system, what one run writes the next
reads; an existing one registered by id is only forgotten when deleted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.aws_harness import MotoAWS
from tests.e2e.lambda_stack import Stack, make_stack
from tests.harness import Env, wait_for
from tests.lambda_fake import FakeLambda

VOLUME = """\
type: volume
name: {name}
backend: lambda
region: us-west-1
{extra}
"""

TASK = """\
type: task
name: {name}
commands:
{commands}
volumes:
  - shared:/data
resources:
  gpu: A10
"""


@pytest.fixture
def stack(env: Env, aws: MotoAWS, lambda_fake: FakeLambda) -> Iterator[Stack]:
    yield from make_stack(env, aws, lambda_fake)


def _volume(stack: Stack, name: str) -> dict:
    with stack.server.api() as api:
        return api.get(f"/api/projects/gpu/volumes/{name}").json()


def _task(stack: Stack, name: str, *commands: str) -> None:
    (stack.repo / ".dstack.yml").write_text(TASK.format(name=name, commands="\n".join(f"  - {c!r}" for c in commands)))


def test_lambda_file_system_is_mounted_where_the_run_lands_and_keeps_data(stack: Stack) -> None:
    (stack.repo / "volume.yml").write_text(VOLUME.format(name="shared", extra=""))  # no size: Lambda's grow
    result = stack.env.cli("apply", "-y", "-f", "volume.yml", cwd=stack.repo, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    volume = _volume(stack, "shared")
    [fs] = stack.fake.file_systems.values()
    assert volume["status"] == "active" and volume["volume_id"] == fs["id"] and fs["region"]["name"] == "us-west-1"

    # Capacity in both regions: the run goes where its file system is.
    stack.fake.set_capacity("gpu_1x_a10", "us-east-1", 2)
    stack.fake.set_capacity("gpu_1x_a10", "us-west-1", 2)
    _task(stack, "writer", "echo shared-between-runs > /data/note.txt", "ls /data")
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note.txt" in result.stdout
    [writer] = stack.fake.instances.values()
    assert writer["region"]["name"] == "us-west-1" and writer["file_system_names"] == ["shared"]

    _task(stack, "reader", "cat /data/note.txt", "sleep 300")
    assert stack.env.cli("apply", "-y", "-d", cwd=stack.repo, timeout=120).returncode == 0
    wait_for(lambda: "shared-between-runs" in stack.env.cli("logs", "reader", cwd=stack.repo).stdout, 120,
             message="the reader to print what the writer wrote")
    assert _volume(stack, "shared")["attached_to"] == ["reader"]
    refused = stack.env.cli("volume", "delete", "shared", "-y", cwd=stack.repo)
    assert refused.returncode != 0 and "attached to reader" in refused.stderr
    assert stack.env.cli("stop", "reader", cwd=stack.repo, timeout=90).returncode == 0
    wait_for(lambda: _volume(stack, "shared")["attached_to"] == [], 60, message="the run to end")
    # Lambda refuses to delete a file system an instance still mounts: deleted once the instance is gone.
    assert stack.env.cli("volume", "delete", "shared", "-y", cwd=stack.repo).returncode == 0
    wait_for(lambda: not stack.fake.file_systems, 60, message="the file system to be deleted")


def test_an_existing_file_system_is_registered_and_only_forgotten(stack: Stack) -> None:
    with stack.fake._lock:
        status, body = stack.fake._post_api_v1_filesystems({}, {"name": "team-data", "region": "us-west-1"})
    assert status == 200
    fs_id = body["data"]["id"]
    (stack.repo / "volume.yml").write_text(VOLUME.format(name="team", extra=f"volume_id: {fs_id}"))
    result = stack.env.cli("apply", "-y", "-f", "volume.yml", cwd=stack.repo, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    listing = stack.env.cli("volume", cwd=stack.repo).stdout
    assert "team" in listing and "(registered)" in listing and "active" in listing
    # A second file system of the same name as an existing one is not adopted.
    (stack.repo / "clash.yml").write_text(VOLUME.format(name="team-data", extra="size: 10GB"))
    clash = stack.env.cli("apply", "-y", "-f", "clash.yml", cwd=stack.repo, timeout=60)
    assert clash.returncode != 0 and "already has a file system named 'team-data'" in clash.stdout
    assert stack.env.cli("delete", "team", "-y", cwd=stack.repo).returncode == 0
    wait_for(lambda: stack.env.cli("volume", cwd=stack.repo).stdout.startswith("No volumes") or
             "team " not in stack.env.cli("volume", cwd=stack.repo).stdout, 30, message="the volume to be forgotten")
    assert fs_id in stack.fake.file_systems  # the file system itself stays
