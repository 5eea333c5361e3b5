"""The Lambda API fake is faithful to the spec (and refuses to break it); our client handles its
errors, rate limits and faults."""

from __future__ import annotations

import time

import httpx
import pytest

from dstack.backends.lambdacloud.api import LambdaAPI, LambdaAPIError
from tests.lambda_fake import FakeLambda


def test_responses_follow_the_spec_and_a_broken_one_is_refused(lambda_fake: FakeLambda) -> None:
    lambda_fake.set_capacity("gpu_1x_a10", "us-east-1", 1)
    api = LambdaAPI("good-key", lambda_fake.url)
    types = api.instance_types()
    assert types["gpu_1x_a10"]["regions_with_capacity_available"] == [{"name": "us-east-1",
                                                                       "description": "Virginia, USA"}]
    assert lambda_fake.violations == []
    lambda_fake.corrupt_next_response("/api/v1/instance-types")
    with pytest.raises(LambdaAPIError) as info:
        api.instance_types()
    assert info.value.status == 500
    assert lambda_fake.violations and "breaks the spec" in lambda_fake.violations[0]


def test_requests_that_break_the_spec_are_rejected(lambda_fake: FakeLambda) -> None:
    time.sleep(0.05)
    response = httpx.post(f"{lambda_fake.url}/api/v1/instance-operations/launch",
                          headers={"Authorization": "Bearer good-key"}, json={"region_name": "mars-1"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "global/invalid-parameters"
    assert "breaks the spec" in lambda_fake.violations[-1]


def test_invalid_key_basic_auth_and_errors(lambda_fake: FakeLambda) -> None:
    with pytest.raises(LambdaAPIError) as info:
        LambdaAPI("bad-key", lambda_fake.url).instance_types()
    assert info.value.code == "global/invalid-api-key" and info.value.status == 401
    time.sleep(0.05)
    basic = httpx.get(f"{lambda_fake.url}/api/v1/instances", auth=("good-key", ""))
    assert basic.status_code == 200 and basic.json() == {"data": []}


def test_launch_capacity_quota_and_terminate(lambda_fake: FakeLambda) -> None:
    api = LambdaAPI("good-key", lambda_fake.url)
    api.add_ssh_key("k", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE7rxiH3w2SP5pUUxyHqkZ+ovk6kL0tvw1kVRH0jHHaY k")
    request = {"region_name": "us-east-1", "instance_type_name": "gpu_1x_a10", "ssh_key_names": ["k"]}
    with pytest.raises(LambdaAPIError) as info:
        api.launch(**request)
    assert info.value.code == "instance-operations/launch/insufficient-capacity"
    lambda_fake.set_capacity("gpu_1x_a10", "us-east-1", 1)
    lambda_fake.inject("launch", "quota-exceeded")
    with pytest.raises(LambdaAPIError) as info:
        api.launch(**request)
    assert info.value.code == "global/quota-exceeded"
    [iid] = api.launch(**request)
    assert api.instance(iid)["status"] == "booting"
    assert api.terminate([iid])[0]["status"] == "terminating"
    assert lambda_fake.violations == []


def test_client_backs_off_through_a_429_storm(lambda_fake: FakeLambda) -> None:
    lambda_fake.inject("any", "429", times=4)
    api = LambdaAPI("good-key", lambda_fake.url)
    assert api.instances() == []
    statuses = [s for _, _, s in lambda_fake.requests]
    assert statuses == [429, 429, 429, 429, 200]
