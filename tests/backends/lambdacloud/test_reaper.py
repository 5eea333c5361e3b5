"""The reaper on Lambda (our API fake, held to the OpenAPI spec): an instance tagged with this
project's job that no live job owns is terminated once past the grace; one whose job's launch is
still under way (claimed, not recorded yet) is spared however long the launch takes."""

from __future__ import annotations

from pathlib import Path

from dstack.backends.base import BackendContext
from dstack.backends.lambdacloud.compute import LambdaCompute
from dstack.backends.lambdacloud.models import LambdaBackendConfig
from tests.lambda_fake import FakeLambda


def _launch(api, job_id: str) -> str:  # noqa: ANN001 - the compute's own API client
    [instance_id] = api.launch(region_name="us-east-1", instance_type_name="gpu_1x_a10", ssh_key_names=["k"],
                               name=f"dstack-{job_id}", tags=[{"key": "dstack-project", "value": "p"},
                                                              {"key": "dstack-job", "value": job_id}])
    return instance_id


def test_orphans_are_reaped_and_a_launch_under_way_is_spared(lambda_fake: FakeLambda, tmp_path: Path) -> None:
    config = LambdaBackendConfig(api_key="good-key", regions=["us-east-1"], access_key_id="a", secret_access_key="s",
                                 bucket="unused", base_url=lambda_fake.url)
    compute = LambdaCompute(config, BackendContext(project="p", server_dir=tmp_path, reaper_grace=0))
    lambda_fake.set_capacity("gpu_1x_a10", "us-east-1", 3)
    compute.api.add_ssh_key("k", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey test")
    live, launching, orphan = (_launch(compute.api, job) for job in ("job-live", "job-launching", "job-orphan"))

    reaped = compute.reap(live_instance_ids={live}, launching_job_ids=frozenset({"job-launching"}))
    assert reaped == [orphan]
    # Its launch recorded no instance and its claim is gone: now it is an orphan too.
    assert compute.reap(live_instance_ids={live}) == [launching]
    assert lambda_fake.violations == []
