"""AWS offers are only the instance types our images can boot and whose GPUs they can drive: the
cheapest 1-GPU types in us-east-1 (AMD g4ad, Graviton g5g) are not offered with the default image,
nor Volta (p3); a request for them says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from dstack.backends.aws.compute import AWSCompute
from dstack.backends.aws.models import AWSBackendConfig
from dstack.backends.base import BackendContext, Requirements
from dstack.core.resources import ResourcesSpec
from dstack.server.services.offers import filter_offers


def _compute(aws, tmp_path: Path, **fields: object) -> AWSCompute:  # noqa: ANN001
    aws.create_bucket("offers-bucket", "us-east-1")
    config = AWSBackendConfig(region="us-east-1", bucket="offers-bucket", credentials={
        "type": "access_key", "access_key_id": aws.admin_keys[0], "secret_access_key": aws.admin_keys[1]}, **fields)
    return AWSCompute(config, BackendContext(project="p", server_dir=tmp_path))


def test_one_gpu_lands_on_an_nvidia_x86_type_the_image_drives(aws, tmp_path: Path,  # noqa: ANN001
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in aws.server_env().items():
        monkeypatch.setenv(key, value)
    compute = _compute(aws, tmp_path)
    requirements = Requirements(resources=ResourcesSpec.model_validate({"gpu": 1}), spot_policy="on-demand")
    offers = sorted(filter_offers("aws", compute.get_offers(requirements), requirements).offers, key=lambda o: o.price)
    families = {o.instance_type.split(".")[0] for o in offers}
    assert offers and offers[0].instance_type == "g4dn.xlarge", offers[:3]
    assert not families & {"g4ad", "g5g", "p3", "p3dn"}, families
    assert {"g5", "g6"} <= families
    # Asking for a GPU the image cannot drive says so, and how to get it.
    v100 = Requirements(resources=ResourcesSpec.model_validate({"gpu": "V100"}), spot_policy="on-demand")
    assert "cannot drive it; set gpu_ami_name" in (compute.unsupported(v100) or "")
    amd = Requirements(resources=ResourcesSpec.model_validate({"gpu": "amd:MI300X:8"}), spot_policy="on-demand")
    assert "NVIDIA GPUs only" in (compute.unsupported(amd) or "")
    arm = Requirements(resources=ResourcesSpec.model_validate({"cpu": "arm:8"}), spot_policy="on-demand")
    assert "Graviton" in (compute.unsupported(arm) or "")
    every = {o.instance_type.split(".")[0] for o in compute.get_offers(requirements) if o.resources.gpus}
    assert not every & {"g4ad", "g5g", "p3", "p3dn"}, every
    # An image of the user's own may drive Volta: then p3dn is offered (still NVIDIA, still x86_64).
    own = _compute(aws, tmp_path, gpu_ami_name="my-volta-image-*")
    own_families = {o.instance_type.split(".")[0] for o in own.get_offers(requirements) if o.resources.gpus}
    assert "p3dn" in own_families and not own_families & {"g4ad", "g5g"}
