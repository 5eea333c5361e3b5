"""A custom subnet: its own public-IP setting is respected, a type EC2 calls Unsupported in the
subnet's zone leaves the offers at once, and a start timeout says what the subnet may lack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dstack.backends.aws.compute import AWSCompute
from dstack.backends.aws.models import AWSBackendConfig
from dstack.backends.base import BackendContext, JobLaunch, LaunchedInstance, LaunchError, Requirements
from dstack.core.resources import ResourcesSpec
from dstack.server.services.offers import filter_offers
from tests.fault_proxy import FaultProxy, Request

REGION = "us-east-1"


@pytest.fixture
def subnet_compute(aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    """An AWS compute on a private subnet (no public IPs on launch), talking to moto through a proxy."""
    proxy = FaultProxy(aws.port)
    audit = tmp_path / "calls.jsonl"
    for key, value in aws.server_env(str(audit)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    aws.create_bucket("subnet-bucket", REGION)
    aws.register_images(REGION)
    ec2 = aws.client("ec2", REGION)
    vpc = ec2.create_vpc(CidrBlock="10.50.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.50.1.0/24", AvailabilityZone="us-east-1b")["Subnet"]
    ec2.modify_subnet_attribute(SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": False})
    config = AWSBackendConfig(region=REGION, bucket="subnet-bucket", subnet=subnet["SubnetId"], ami_owners=["self"],
                              credentials={"type": "access_key", "access_key_id": aws.admin_keys[0],
                                           "secret_access_key": aws.admin_keys[1]})
    yield AWSCompute(config, BackendContext(project="p", server_dir=tmp_path)), proxy, audit
    proxy.stop()


def test_private_subnet_gets_no_public_ip_and_unsupported_types_leave_the_offers(subnet_compute) -> None:  # noqa: ANN001
    compute, proxy, audit = subnet_compute
    requirements = Requirements(resources=ResourcesSpec.model_validate({"cpu": "2..", "memory": "4GB.."}),
                                spot_policy="on-demand")
    def offers() -> list:
        return sorted(filter_offers("aws", compute.get_offers(requirements), requirements).offers, key=lambda o: o.price)

    cheapest = offers()[0]

    def unsupported(request: Request) -> tuple[int, bytes] | None:
        if b"Action=RunInstances" in request.body and f"InstanceType={cheapest.instance_type}".encode() in request.body:
            return 400, (b"<Response><Errors><Error><Code>Unsupported</Code><Message>Your requested instance type "
                         b"is not supported in your requested Availability Zone (us-east-1b).</Message></Error>"
                         b"</Errors><RequestID>x</RequestID></Response>")
        return None

    proxy.rule = unsupported
    job = JobLaunch(job_id="j1", project="p", run_name="r", job_prefix="dstack/runs/p/r/jobs/j1")
    with pytest.raises(LaunchError, match=f"{cheapest.instance_type} is not offered in us-east-1b"):
        compute.launch(job=job, offer=cheapest)
    assert cheapest.instance_type not in {o.instance_type for o in offers()}

    # The next offer launches, without a public IP: the subnet gives none.
    second = offers()[0]
    launched = compute.launch(job=job.model_copy(update={"job_id": "j2"}), offer=second)
    run = [json.loads(line) for line in audit.read_text().splitlines() if '"RunInstances"' in line][-1]
    assert run["params"]["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is False
    hint = compute.start_timeout_hint(instance=LaunchedInstance(instance_id=launched.instance_id, region=REGION))
    assert hint and "NAT" in hint and compute.config.subnet in hint

    # `dstack attach` to it: refused with the reason and the fix, never a hang on an unreachable address.
    from dstack.core.errors import InvalidStateError

    check = compute.check_instance(instance=launched)
    instance = launched.model_copy(update={"data": check.data or launched.data})
    assert instance.data["private_ip"] and not instance.data.get("public_ip")
    with pytest.raises(InvalidStateError) as refused:
        compute.ssh_jump(instance=instance)
    assert f"{launched.instance_id} has no public IP" in str(refused.value)
    assert "proxy_jump" in refused.value.fix
    # With a jump host configured, users reach the private address through it.
    compute.config.proxy_jump = "ec2-user@bastion.example.com:2222"
    jump = compute.ssh_jump(instance=instance)
    assert (jump.host, jump.port, jump.via) == (instance.data["private_ip"], 22, "ec2-user@bastion.example.com:2222")


def test_proxy_jump_is_validated() -> None:
    base = {"region": REGION, "bucket": "b-bucket"}
    assert AWSBackendConfig(**base, proxy_jump=" bastion.example.com ").proxy_jump == "bastion.example.com"
    with pytest.raises(ValueError, match=r"is not \[user@\]host\[:port\]"):
        AWSBackendConfig(**base, proxy_jump="ssh://bastion")
