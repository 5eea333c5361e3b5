"""AWS benchmarks: warm planning across every catalog region, and VM bootstrap time."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from dstack.backends.aws import catalog
from dstack.backends.aws.compute import AWSCompute
from dstack.backends.aws.models import AWSBackendConfig
from dstack.backends.base import BackendContext, Requirements
from dstack.core.resources import ResourcesSpec
from dstack.server.services.offers import filter_offers


def bench_plan_all_regions(aws, home: Path) -> float:  # noqa: ANN001
    """Median wall time of planning `gpu: 24GB..` over all 22 catalog regions, caches warm."""
    os.environ.update(aws.server_env())  # this process plans, against moto
    computes = []
    for region in catalog.regions():
        bucket = f"bench-{region}"
        aws.create_bucket(bucket, region)
        config = AWSBackendConfig(region=region, bucket=bucket, credentials={
            "type": "access_key", "access_key_id": aws.admin_keys[0], "secret_access_key": aws.admin_keys[1]})
        computes.append(AWSCompute(config, BackendContext(project="bench", server_dir=home)))
    requirements = Requirements(resources=ResourcesSpec.model_validate({"gpu": "24GB.."}), spot_policy="auto")

    def plan() -> int:
        offers = []
        for compute in computes:
            offers += filter_offers("aws", compute.get_offers(requirements), requirements).offers
        offers.sort(key=lambda o: o.price)
        return len(offers)

    assert plan() > 0  # warms the instance-type and spot-price caches
    samples = []
    for _ in range(20):
        started = time.perf_counter()
        plan()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bench_vm_bootstrap(aws, env, runs: int = 5) -> tuple[float, float]:  # noqa: ANN001
    """(Median time from the VM host starting the user data (chrooted into the stock Debian tree) to
    the job's status `running`, in its container (the default image, cached); median time of
    `dstack attach RUN -c true` to a running dev environment there, through the instance's sshd.)"""
    from tests.aws_cloud import FakeEC2Cloud
    from tests.aws_harness import seed_policy_user
    from tests.harness import Server, wait_for
    from tests.stock_tree import default_image_env

    from bench.attach import time_attach

    bucket, region = "bench-boot-bucket", "us-east-1"
    aws.become_admin()  # the cloud switches IAM enforcement on when it boots an instance
    aws.create_bucket(bucket, region)
    aws.register_images(region)
    key_id, secret = seed_policy_user(aws, bucket, name="bench-user")
    env.extra.update({**aws.server_env(), **default_image_env()})
    server = Server(env).start()
    cloud = FakeEC2Cloud(aws, region, env.home / "vms").start()
    s3 = aws.client("s3", region)
    samples = []
    try:
        with server.api() as api:
            api.post("/api/projects", json={"name": "boot"}).raise_for_status()
            api.delete("/api/projects/boot/backends/local").raise_for_status()
            api.post("/api/projects/boot/backends", json={
                "type": "aws", "region": region, "bucket": bucket, "ami_owners": ["self"],
                "credentials": {"type": "access_key", "access_key_id": key_id, "secret_access_key": secret},
            }).raise_for_status()
            repo = env.home / "boot-repo"
            repo.mkdir()
            assert env.cli("init", "--project", "boot", cwd=repo).returncode == 0
            (repo / ".dstack.yml").write_text("type: task\ncommands: [sleep 2]\nresources: {cpu: 2.., memory: 4GB..}\n")
            for _ in range(runs):
                before = set(cloud.booted)
                result = env.cli("apply", "-y", "-d", cwd=repo)
                assert result.returncode == 0, result.stderr
                iid = wait_for(lambda before=before: next(iter(set(cloud.booted) - before), None), 30)
                booted = cloud.booted[iid]
                prefix = next(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="dstack/runs/boot/")
                              ["Contents"] if o["Key"].endswith("instance.json") and _instance(s3, bucket, o) == iid)

                def running(prefix: str = prefix) -> bool:
                    obj = s3.list_objects_v2(Bucket=bucket, Prefix=prefix.replace("instance.json", "status.json"))
                    if not obj.get("Contents"):
                        return False
                    body = s3.get_object(Bucket=bucket, Key=obj["Contents"][0]["Key"])["Body"].read()
                    return json.loads(body)["status"] in ("running", "done")

                wait_for(running, 30, interval=0.05, message="the job to run")
                samples.append(time.monotonic() - booted.started_at)
            (repo / ".dstack.yml").write_text("type: dev-environment\nname: bench-vm-dev\n"
                                              "resources: {cpu: 2.., memory: 4GB..}\n")
            assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
            wait_for(lambda: api.get("/api/projects/boot/runs/bench-vm-dev").json()["status"] == "running", 60,
                     message="the dev environment")
            assert env.cli("attach", "bench-vm-dev", "-c", "true", cwd=repo, timeout=90).returncode == 0
            attach = time_attach(env, "bench-vm-dev", repo)
            env.cli("stop", "bench-vm-dev", "--abort", cwd=repo)
    finally:
        cloud.stop()
        server.stop()
    return statistics.median(samples), statistics.median(attach)


def _instance(s3, bucket: str, obj: dict) -> str:  # noqa: ANN001
    return json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())["instance_id"]
