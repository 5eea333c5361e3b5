"""AWS for tests: moto in server mode, in this process (real HTTP on 127.0.0.1).

In-process, so a test can also reach moto's state: inject capacity errors, read instances'
user data. IAM enforcement is switched on where moto enforces correctly (S3, EC2 action names,
role names); every other check is done by evaluating recorded calls (tests/iam_eval.py).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import Any

import boto3
import httpx
from moto.server import ThreadedMotoServer

from tests.harness import free_port

ACCOUNT = "123456789012"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


class MotoAWS:
    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        os.environ.setdefault("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
        os.environ.setdefault("MOTO_ENABLE_AMI_VALIDATION", "true")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.admin_keys = ("testing", "testing")

    def stop(self) -> None:
        self.server.stop()

    def reset(self) -> None:
        self.enforce(False)
        httpx.post(f"{self.endpoint}/moto-api/reset").raise_for_status()
        self.admin_keys = ("testing", "testing")

    def enforce(self, on: bool) -> None:
        """Turn moto's IAM enforcement on (every call must be allowed) or off."""
        httpx.post(f"{self.endpoint}/moto-api/reset-auth", content="0" if on else "inf",
                   headers={"Content-Type": "text/plain"}).raise_for_status()

    @contextmanager
    def unenforced(self):  # noqa: ANN201
        self.enforce(False)
        try:
            yield
        finally:
            self.enforce(True)

    def client(self, service: str, region: str = "us-east-1", keys: tuple[str, ...] | None = None) -> Any:
        key_id, secret, *token = keys or self.admin_keys
        return boto3.client(service, region_name=region, endpoint_url=self.endpoint, aws_access_key_id=key_id,
                            aws_secret_access_key=secret, aws_session_token=token[0] if token else None)

    def create_user(self, name: str, *policies: dict[str, Any]) -> tuple[str, str]:
        """An IAM user with these inline policies, and its access key."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        for i, policy in enumerate(policies):
            iam.put_user_policy(UserName=name, PolicyName=f"{name}-{i}", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def become_admin(self) -> None:
        """Use a real IAM admin from now on, so the harness still works under enforcement."""
        self.admin_keys = self.create_user("harness-admin", ADMIN_POLICY)

    def create_bucket(self, name: str, region: str) -> None:
        s3 = self.client("s3", region)
        if region == "us-east-1":
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})

    def register_images(self, region: str) -> dict[str, str]:
        """Images named as the AWS backend's defaults (moto's own list is from 2017)."""
        ec2 = self.client("ec2", region)
        ids = {}
        for kind, name in (("cpu", "al2023-ami-ecs-hvm-2023.0.20251101-kernel-6.1-x86_64"),
                           ("gpu", "al2023-ami-ecs-gpu-hvm-2023.0.20251101-kernel-6.1-x86_64")):
            ids[kind] = ec2.register_image(Name=name, Architecture="x86_64", RootDeviceName="/dev/xvda",
                                           VirtualizationType="hvm")["ImageId"]
        return ids

    def server_env(self, audit_log: str | None = None) -> dict[str, str]:
        """Environment of a dstack server that talks to this moto (and never to IMDS)."""
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
        if audit_log:
            env["DSTACK_AWS_AUDIT_LOG"] = audit_log
        return env



# moto evaluates these falsely as denied (resource ARNs of Logs, Secrets Manager and IAM objects
# that don't exist yet), so the test user also gets them; tests/iam_eval.py checks every recorded
# call against the seed's policy alone, so nothing outside it goes unnoticed.
MOTO_FALSE_DENY_WORKAROUND = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
        "logs:*", "secretsmanager:*", "iam:CreateRole", "iam:CreatePolicy", "iam:CreateInstanceProfile",
        "iam:GetInstanceProfile", "iam:AddRoleToInstanceProfile", "iam:TagInstanceProfile", "iam:TagPolicy",
        "iam:GetRole", "iam:AttachRolePolicy", "iam:TagRole", "iam:PassRole"]}],
}


def seed_policy_user(aws: MotoAWS, bucket: str, name: str = "dstack-user") -> tuple[str, str]:
    """An IAM user whose only real policy is the seed's template for `bucket`."""
    from dstack.backends.aws.iam_policy import policy

    return aws.create_user(name, policy(bucket), MOTO_FALSE_DENY_WORKAROUND)
