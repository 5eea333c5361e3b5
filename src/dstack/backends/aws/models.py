"""The AWS backend's configuration form (the fields of the user's AWS document)."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_JUMP_RE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(?::[0-9]{1,5})?\Z")


class DefaultCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Default credentials")
    type: Literal["default"] = "default"


class AccessKeyCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Access key")
    type: Literal["access_key"] = "access_key"
    # "(Optional)" as the seed marks them: the credentials as a whole are (default ones otherwise).
    access_key_id: str = Field(min_length=1, title="Access key ID",
                               description="The Access key ID to authenticate dstack",
                               json_schema_extra={"mark": "optional"})
    secret_access_key: str = Field(min_length=1, title="Secret access key",
                                   description="The Secret access key to authenticate dstack",
                                   json_schema_extra={"mark": "optional"})


AWSCredentials = Annotated[DefaultCredentials | AccessKeyCredentials, Field(discriminator="type")]


class AWSBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="AWS")
    SECRET_FIELDS: ClassVar[set[str]] = {"credentials.secret_access_key"}

    type: Literal["aws"] = "aws"
    region: str = Field(title="Region", description="The region where dstack will provision infrastructure and "
                        "store state and artifacts")
    bucket: str = Field(title="Bucket", description="The S3 bucket to store state and artifacts "
                        "(must be in the same region)")
    credentials: AWSCredentials = Field(
        default_factory=DefaultCredentials, title="Credentials",
        description="Default credentials (env vars, profiles of the server's machine) or an Access key")
    subnet: str | None = Field(default=None, title="Subnet",
                               description="The EC2 subnet is required to provision infrastructure using a "
                               "non-default VPC and subnet. If not specified, dstack will use the default VPC "
                               "and subnet.")
    proxy_jump: str | None = Field(
        default=None, title="SSH jump host",
        description="For instances without a public IP (a private subnet): the SSH host users reach them "
        "through, as [user@]host[:port] (`ssh -J`). Users log in to it with their own SSH setup for it "
        "(key, agent, ~/.ssh/config).", json_schema_extra={"advanced": True})
    # The ECS-optimized Amazon Linux 2023 images: Docker (and, for GPUs, the NVIDIA driver and container
    # toolkit) preinstalled, python3 3.9, found with ec2:DescribeImages alone (the seed's policy).
    cpu_ami_name: str = Field(default="al2023-ami-ecs-hvm-*-kernel-6.1-x86_64",
                              title="AMI name (CPU)", description="Name pattern of the image for CPU instances",
                              json_schema_extra={"advanced": True})
    gpu_ami_name: str = Field(default="al2023-ami-ecs-gpu-hvm-*-kernel-6.1-x86_64",
                              title="AMI name (GPU)", description="Name pattern of the image for GPU instances",
                              json_schema_extra={"advanced": True})
    ami_owners: list[str] = Field(default_factory=lambda: ["amazon"], title="AMI owners",
                                  description="Accounts whose images may be used",
                                  json_schema_extra={"advanced": True})

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        value = value.strip()
        if value.startswith("s3://"):
            value = value[5:].rstrip("/")
        if not _BUCKET_RE.match(value):
            raise ValueError(f"{value!r} is not a valid S3 bucket name")
        return value

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str | None) -> str | None:
        value = (value or "").strip() or None
        if value is not None and not value.startswith("subnet-"):
            raise ValueError(f"{value!r} is not a subnet ID (they look like subnet-0abc123…)")
        return value

    @field_validator("proxy_jump")
    @classmethod
    def _proxy_jump(cls, value: str | None) -> str | None:
        value = (value or "").strip() or None
        if value is not None and not _JUMP_RE.match(value):
            raise ValueError(f"{value!r} is not [user@]host[:port] (e.g. ec2-user@bastion.example.com:22)")
        return value

    @property
    def bucket_under_score(self) -> str:
        # As the IAM policy template defines it: dashes replaced with underscores.
        return self.bucket.replace("-", "_")


CONFIG_MODEL = AWSBackendConfig
