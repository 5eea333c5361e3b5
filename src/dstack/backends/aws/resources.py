"""The AWS resources a launch needs, created on first use under the names the IAM policy allows:
the instance profile `dstack_role_{bucket_under_score}` with its policy
`dstack_policy_{bucket_under_score}`, a security group, the image, the subnet."""

from __future__ import annotations

import json
import threading
from typing import Any

from botocore.exceptions import ClientError

from dstack.backends.aws.iam_policy import instance_role_policy
from dstack.backends.aws.models import AWSBackendConfig
from dstack.backends.aws.session import error_code
from dstack.backends.base import LaunchError

_TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                   "Action": "sts:AssumeRole"}]}


class AWSResources:
    """Finds or creates, once per process, what every instance of this backend shares."""

    def __init__(self, config: AWSBackendConfig, clients: Any) -> None:
        self.config = config
        self.clients = clients
        self._lock = threading.Lock()
        self._profile: str | None = None
        self._network: tuple[str, str | None] | None = None
        self._security_groups: dict[str, str] = {}
        self.subnet_public_ip = True
        self.subnet_zone: str | None = None
        self._images: dict[bool, str] = {}

    def tags(self) -> list[dict[str, str]]:
        return [{"Key": "dstack_bucket", "Value": self.config.bucket}]

    def instance_profile(self) -> str:
        with self._lock:
            if self._profile is None:
                self._profile = self._ensure_instance_profile()
            return self._profile

    def _ensure_instance_profile(self) -> str:
        iam = self.clients.iam
        name = f"dstack_role_{self.config.bucket_under_score}"
        policy_name = f"dstack_policy_{self.config.bucket_under_score}"
        try:
            iam.get_role(RoleName=name)
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(_TRUST), Tags=self.tags(),
                            Description="dstack instances: their bucket, log groups and own termination")
        account = self.clients.sts.get_caller_identity()["Account"]
        policy_arn = f"arn:aws:iam::{account}:policy/{policy_name}"
        try:
            iam.create_policy(PolicyName=policy_name, PolicyDocument=json.dumps(instance_role_policy(
                self.config.bucket)), Tags=self.tags())
        except ClientError as exc:
            if error_code(exc) != "EntityAlreadyExists":
                raise
        iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)  # idempotent
        try:
            profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            profile = iam.create_instance_profile(InstanceProfileName=name, Tags=self.tags())["InstanceProfile"]
        if not any(r["RoleName"] == name for r in profile.get("Roles", [])):
            try:
                iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
            except ClientError as exc:
                if error_code(exc) != "LimitExceeded":  # already has it (a race with another replica)
                    raise
        return name

    def network(self) -> tuple[str, str | None]:
        """(VPC id, subnet id or None for the default VPC's subnets)."""
        with self._lock:
            if self._network is None:
                ec2 = self.clients.ec2
                if self.config.subnet:
                    subnets = ec2.describe_subnets(SubnetIds=[self.config.subnet])["Subnets"]
                    self._network = (subnets[0]["VpcId"], self.config.subnet)
                    # The subnet's own choice: a public IP only where it gives one (else the instance
                    # reaches S3 and CloudWatch through a NAT or VPC endpoints).
                    self.subnet_public_ip = bool(subnets[0].get("MapPublicIpOnLaunch"))
                    self.subnet_zone = subnets[0].get("AvailabilityZone")
                else:
                    subnets = ec2.describe_subnets(
                        Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
                    if not subnets:
                        raise LaunchError(f"{self.config.region} has no default VPC: set Subnet in the backend",
                                          backend_wide=True)
                    self._network = (subnets[0]["VpcId"], None)
            return self._network

    def default_zone(self) -> str:
        """Where a new volume goes when none is asked for: the subnet's zone, else the first zone
        of the default VPC (instances that mount it are then placed there)."""
        zone = self.subnet_zone_of_config()
        if zone:
            return zone
        subnets = self.clients.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])
        zones = sorted(s["AvailabilityZone"] for s in subnets["Subnets"])
        return zones[0] if zones else f"{self.config.region}a"

    def subnet_zone_of_config(self) -> str | None:
        """The configured subnet's availability zone (it fixes where instances go)."""
        self.network()
        return self.subnet_zone

    def security_group(self, vpc_id: str) -> str:
        with self._lock:
            if vpc_id not in self._security_groups:
                self._security_groups[vpc_id] = self._ensure_security_group(vpc_id)
            return self._security_groups[vpc_id]

    def _ensure_security_group(self, vpc_id: str) -> str:
        ec2 = self.clients.ec2
        name = f"dstack-{self.config.bucket}"
        found = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]},
                                                      {"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
        if found:
            group = found[0]["GroupId"]
            if not any(_is_ssh_rule(p) for p in found[0].get("IpPermissions") or []):
                self._allow_ssh(group)  # a group made before `dstack attach` reached AWS instances
            return group
        # In: SSH only (key-only, as upstream), for `dstack attach` through the instance's sshd, where
        # users' keys may open one forward, to the job's sshd (bootstrap.authorize_jump_keys). Out:
        # anything (the agent calls S3, CloudWatch, the registry).
        group = ec2.create_security_group(
            GroupName=name, VpcId=vpc_id, Description="dstack instances: SSH in, anything out",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": self.tags()}])["GroupId"]
        self._allow_ssh(group)
        return group

    def _allow_ssh(self, group: str) -> None:
        try:
            self.clients.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[SSH_RULE])
        except ClientError as exc:
            if error_code(exc) != "InvalidPermission.Duplicate":
                raise

    def image(self, gpu: bool) -> tuple[str, str]:
        """(image id, its root device name): the root volume is sized through that device."""
        with self._lock:
            if gpu not in self._images:
                pattern = self.config.gpu_ami_name if gpu else self.config.cpu_ami_name
                images = self.clients.ec2.describe_images(
                    Owners=self.config.ami_owners,
                    Filters=[{"Name": "name", "Values": [pattern]}, {"Name": "state", "Values": ["available"]}],
                )["Images"]
                images = [i for i in images if i.get("Architecture", "x86_64") == "x86_64"]
                if not images:
                    raise LaunchError(f"no image named {pattern!r} (owners {', '.join(self.config.ami_owners)}) "
                                      f"in {self.config.region}", backend_wide=True)
                newest = max(images, key=lambda i: i.get("CreationDate", ""))
                self._images[gpu] = (newest["ImageId"], newest.get("RootDeviceName") or "/dev/xvda")
            return self._images[gpu]


SSH_RULE = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "dstack attach (key-only SSH)"}]}


def _is_ssh_rule(permission: dict[str, Any]) -> bool:
    return (permission.get("IpProtocol") in ("tcp", "-1") and permission.get("FromPort", 22) <= 22
            <= permission.get("ToPort", 22))
