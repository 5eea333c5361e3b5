"""The Lambda end-to-end stack: a real server whose project `gpu` has only the Lambda backend (the
spec-validating fake), VM hosts playing its instances, moto playing the bucket's S3."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.aws_harness import MotoAWS
from tests.harness import Env, Server, need
from tests.lambda_cloud import LambdaVMs
from tests.lambda_fake import FakeLambda
from tests.stock_tree import default_image_env
from tests.vmhost import can_run_vm_hosts

BUCKET = "dstack-lambda-bucket"
S3_ONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": [
    f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}, {"Effect": "Allow", "Action": "s3:ListAllMyBuckets",
                                                            "Resource": "*"}]}


@dataclass
class Stack:
    env: Env
    server: Server
    aws: MotoAWS
    fake: FakeLambda
    vms: LambdaVMs
    repo: Path
    keys: tuple[str, str]

    def run(self, name: str) -> dict:
        with self.server.api() as api:
            return api.get(f"/api/projects/gpu/runs/{name}").json()


def lambda_config(fake: FakeLambda, keys: tuple[str, str], **fields: object) -> dict:
    return {"type": "lambda", "api_key": "good-key", "regions": ["us-east-1", "us-west-1"], "storage": "aws",
            "access_key_id": keys[0], "secret_access_key": keys[1], "bucket": BUCKET, "base_url": fake.url, **fields}


def make_stack(env: Env, aws: MotoAWS, lambda_fake: FakeLambda) -> Iterator[Stack]:
    ok, why = can_run_vm_hosts()
    need(ok, why)
    aws.create_bucket(BUCKET, "us-east-1")
    keys = aws.create_user("lambda-storage", S3_ONLY)
    # moto cannot authenticate presigned requests under IAM enforcement, so it stays off here.
    env.extra.update(aws.server_env())
    env.extra.update(default_image_env())
    env.extra.update({"DSTACK_LAMBDA_RATE_SCALE": "0.02", "DSTACK_HEARTBEAT_TIMEOUT": "20", "DSTACK_METRICS_INTERVAL": "2",
                      "DSTACK_PROVISIONING_TIMEOUT": "12",
                      "DSTACK_REAPER_INTERVAL": "1", "DSTACK_REAPER_GRACE": "2"})
    vms = LambdaVMs(lambda_fake, aws, env.home / "vms")
    server = Server(env).start()
    try:
        with server.api() as api:
            api.post("/api/projects", json={"name": "gpu"}).raise_for_status()
            api.delete("/api/projects/gpu/backends/local").raise_for_status()
            response = api.post("/api/projects/gpu/backends", json=lambda_config(lambda_fake, keys))
            assert response.status_code == 201, response.text
            api.put("/api/projects/gpu/secrets/WANDB_KEY", json={"value": "wandb-secret-123"}).raise_for_status()
        repo = env.home / "repo"
        repo.mkdir()
        assert env.cli("init", "--project", "gpu", cwd=repo).returncode == 0
        yield Stack(env, server, aws, lambda_fake, vms, repo, keys)
        assert lambda_fake.violations == [], lambda_fake.violations
    finally:
        server.stop()
        vms.stop()
