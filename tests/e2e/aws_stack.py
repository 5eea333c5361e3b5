"""The AWS end-to-end stack: a real server whose project `cloud` has only the AWS backend (moto in
server mode behind a fault-injecting proxy), and FakeEC2Cloud booting each launched instance as a
VM host on the stock OS tree."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.aws_cloud import FakeEC2Cloud
from tests.aws_harness import MotoAWS, seed_policy_user
from tests.fault_proxy import FaultProxy, stable_cloudwatch_event_ids
from tests.harness import Env, Server, need
from tests.stock_tree import default_image_env
from tests.vmhost import can_run_vm_hosts

BUCKET = "dstack-e2e-bucket"
REGION = "us-east-1"
SECRET = "hf_s3cr3t-value-that-must-never-leak"


@dataclass
class Stack:
    env: Env
    server: Server
    aws: MotoAWS
    cloud: FakeEC2Cloud
    audit_log: Path
    repo: Path
    # Between the server and moto: tests give it a rule to play EC2's documented misbehaviour.
    proxy: FaultProxy
    _seen_tags: dict[str, dict[str, str]] = field(default_factory=dict)

    def run_status(self, name: str) -> str:
        with self.server.api() as api:
            return api.get(f"/api/projects/cloud/runs/{name}").json()["status"]

    def instances(self) -> list[dict]:
        ec2 = self.aws.client("ec2", REGION)
        return [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def instance_tags(self, instance_id: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for i in self.instances() if i["InstanceId"] == instance_id
                for t in i.get("Tags", [])}

    def volume_tags(self, volume_id: str) -> dict[str, str]:
        """An EBS volume's tags, remembered (the policy check needs those of deleted volumes too)."""
        volumes = self.aws.client("ec2", REGION).describe_volumes(
            Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"]
        if volumes:
            self._seen_tags[volume_id] = {t["Key"]: t["Value"] for t in volumes[0].get("Tags", [])}
        return self._seen_tags.get(volume_id, {})

    def resource_tags(self, resource_id: str) -> dict[str, str]:
        """Tags of an instance or a volume, for tests/iam_eval.py's conditions."""
        return self.volume_tags(resource_id) if resource_id.startswith("vol-") else self.instance_tags(resource_id)


def make_stack(request: pytest.FixtureRequest, env: Env, aws: MotoAWS) -> Iterator[Stack]:
    """A server whose project `cloud` has only the AWS backend; `request.param` picks how it
    authenticates: access_key (stored), default-env or default-profile (the server's machine)."""
    mode = getattr(request, "param", "access_key")
    ok, why = can_run_vm_hosts()
    need(ok, why)
    aws.become_admin()
    aws.create_bucket(BUCKET, REGION)
    aws.register_images(REGION)
    key_id, secret_key = seed_policy_user(aws, BUCKET)
    audit_log = env.home / "aws-calls.jsonl"
    env.extra.update(aws.server_env(str(audit_log)))
    # Metrics every 2 s: `inactivity_duration` and `utilization_policy` are seen soon after they apply.
    env.extra.update({"DSTACK_REAPER_INTERVAL": "1", "DSTACK_REAPER_GRACE": "3", "DSTACK_METRICS_INTERVAL": "2",
                      **default_image_env()})
    proxy = FaultProxy(aws.port)
    proxy.normalize = stable_cloudwatch_event_ids
    env.extra["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.port}"
    credentials: dict[str, str] = {"type": "access_key", "access_key_id": key_id, "secret_access_key": secret_key}
    if mode == "default-env":
        env.extra.update({"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret_key})
        credentials = {"type": "default"}
    elif mode == "default-profile":
        profile = env.home / "aws-credentials"
        profile.write_text(f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret_key}\n")
        env.extra["AWS_SHARED_CREDENTIALS_FILE"] = str(profile)
        credentials = {"type": "default"}
    server = Server(env).start()
    cloud = FakeEC2Cloud(aws, REGION, env.home / "vms").start()
    try:
        with server.api() as api:
            api.post("/api/projects", json={"name": "cloud"}).raise_for_status()
            api.delete("/api/projects/cloud/backends/local").raise_for_status()
            config = {"type": "aws", "region": REGION, "bucket": BUCKET, "ami_owners": ["self"],
                      "credentials": credentials}
            aws.enforce(True)
            response = api.post("/api/projects/cloud/backends", json=config)
            assert response.status_code == 201, response.text
            api.put("/api/projects/cloud/secrets/HF_TOKEN", json={"value": SECRET}).raise_for_status()
        repo = env.home / "repo"
        repo.mkdir()
        assert env.cli("init", "--project", "cloud", cwd=repo).returncode == 0
        yield Stack(env, server, aws, cloud, audit_log, repo, proxy)
        assert cloud.errors == [], cloud.errors  # (not a test module: no assertion rewriting)
    finally:
        cloud.stop()
        server.stop()
        proxy.stop()
