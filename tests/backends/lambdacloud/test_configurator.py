"""The Lambda backend's form against the Lambda fake and moto, through a real server process."""

from __future__ import annotations

import pytest

from tests.aws_harness import MotoAWS
from tests.harness import Env, Server
from tests.lambda_fake import FakeLambda

BUCKET = "dstack-lambda-bucket"


@pytest.fixture
def setup(env: Env, aws: MotoAWS, lambda_fake: FakeLambda) -> tuple[Server, dict]:
    aws.become_admin()
    aws.create_bucket(BUCKET, "us-east-1")
    aws.create_bucket("not-ours-bucket", "us-east-1")
    keys = aws.create_user("storage", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]},
        {"Effect": "Allow", "Action": ["s3:ListAllMyBuckets", "s3:GetBucketLocation"], "Resource": "*"}]})
    aws.enforce(True)
    lambda_fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    env.extra.update(aws.server_env())
    env.extra["DSTACK_LAMBDA_RATE_SCALE"] = "0.02"
    server = Server(env).start()
    form = {"type": "lambda", "api_key": "good-key", "regions": ["us-west-1", "us-east-1"], "storage": "aws",
            "access_key_id": keys[0], "secret_access_key": keys[1], "bucket": BUCKET, "base_url": lambda_fake.url}
    yield server, form
    server.stop()


def check(server: Server, config: dict) -> dict:
    with server.api() as api:
        response = api.post("/api/projects/main/backends/check", json=config)
        assert response.status_code == 200, response.text
        return response.json()


def errors(result: dict) -> dict:
    return {e["field"]: e["message"] for e in result["errors"]}


def test_valid_form_and_choices(setup: tuple[Server, dict]) -> None:
    server, form = setup
    result = check(server, form)
    assert result["ok"], result
    assert "us-west-1" in result["choices"]["regions"] and BUCKET in result["choices"]["bucket"]


def test_invalid_api_key_errors_on_its_field_and_says_where_to_create_one(setup: tuple[Server, dict]) -> None:
    server, form = setup
    message = errors(check(server, {**form, "api_key": "nope"}))["api_key"]
    assert message.startswith("Lambda Cloud does not accept this API key") and "Generate API key" in message


def test_unknown_regions(setup: tuple[Server, dict]) -> None:
    server, form = setup
    message = errors(check(server, {**form, "regions": ["us-west-1", "mars-north-1"]}))["regions"]
    assert message.startswith("unknown region mars-north-1: choose from")


def test_aws_key_and_bucket_errors(setup: tuple[Server, dict]) -> None:
    server, form = setup
    assert errors(check(server, {**form, "access_key_id": "AKIANOPENOPENOPE1234"})) == {
        "access_key_id": "AWS does not know this access key ID"}
    assert errors(check(server, {**form, "secret_access_key": "x" * 40})) == {
        "secret_access_key": "the secret access key does not match the access key ID"}
    assert errors(check(server, {**form, "bucket": "missing-bucket-x"})) == {
        "bucket": "bucket missing-bucket-x does not exist"}
    assert errors(check(server, {**form, "bucket": "not-ours-bucket"}))["bucket"].startswith(
        "bucket not-ours-bucket is not readable with these AWS keys")
    assert errors(check(server, {k: v for k, v in form.items() if k != "bucket"})) == {
        "bucket": "bucket: this field is required"}


def test_saved_secrets_are_masked(setup: tuple[Server, dict]) -> None:
    server, form = setup
    with server.api() as api:
        saved = api.post("/api/projects/main/backends", json=form)
        assert saved.status_code == 201, saved.text
        config = next(b for b in saved.json()["backends"] if b["type"] == "lambda")["config"]
    assert config["api_key"] == "********" and config["secret_access_key"] == "********"
    assert "good-key" not in saved.text and form["secret_access_key"] not in saved.text


def test_plan_picks_the_cheaper_backend_across_aws_and_lambda(env: Env, aws: MotoAWS, setup: tuple[Server, dict]) -> None:
    server, form = setup
    from dstack.api.code import repo_id_for
    from tests.aws_harness import seed_policy_user

    aws_bucket = "dstack-aws-bucket"
    aws.create_bucket(aws_bucket, "us-east-1")
    key_id, secret = seed_policy_user(aws, aws_bucket, name="aws-user")
    repo = env.home / "repo"
    repo.mkdir()
    with server.api() as api:
        api.post("/api/projects/main/backends", json=form).raise_for_status()
        api.post("/api/projects/main/backends", json={
            "type": "aws", "region": "us-east-1", "bucket": aws_bucket,
            "credentials": {"type": "access_key", "access_key_id": key_id, "secret_access_key": secret},
        }).raise_for_status()
        api.post("/api/projects/main/repos", json={"repo_id": repo_id_for(repo)}).raise_for_status()

        def plan(resources: dict) -> list[dict]:
            spec = {"configuration": {"type": "task", "commands": ["x"], "resources": resources},
                    "repo_id": repo_id_for(repo)}
            response = api.post("/api/projects/main/runs/plan", json=spec)
            assert response.status_code == 200, response.text
            return response.json()["offers"]

        # A 24GB GPU: Lambda's A10 ($0.75/h) beats AWS's g5.xlarge ($1.006/h); local has no GPU.
        offers = plan({"gpu": "24GB"})
        assert (offers[0]["backend"], offers[0]["instance_type"], offers[0]["price"]) == ("lambda", "gpu_1x_a10", 0.75)
        assert any(o["backend"] == "aws" and o["instance_type"] == "g5.xlarge" for o in offers)
        # CPU only: the local machine (free) first, then AWS's t3.medium before any Lambda GPU box.
        offers = plan({"cpu": "2..", "memory": "4GB.."})
        assert [o["backend"] for o in offers[:2]] == ["local", "aws"] and offers[1]["instance_type"] == "t3.medium"
        assert min(i for i, o in enumerate(offers) if o["backend"] == "lambda") > 1


def test_presigned_urls_are_sigv4_on_the_buckets_regional_endpoint(monkeypatch) -> None:  # noqa: ANN001
    """What the agent gets: SigV4, virtual-hosted on the bucket's own region (the global endpoint
    answers 307 for a young bucket outside us-east-1, which a presigned POST does not follow)."""
    from dstack.backends.lambdacloud.configurator import s3_client
    from dstack.backends.lambdacloud.models import LambdaBackendConfig

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    config = LambdaBackendConfig(api_key="k", regions=["us-east-1"], storage="aws", access_key_id="AKIAEXAMPLE",
                                 secret_access_key="secret", bucket="young-bucket")
    s3 = s3_client(config, "eu-west-1")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "young-bucket", "Key": "a/b"}, ExpiresIn=60)
    assert url.startswith("https://young-bucket.s3.eu-west-1.amazonaws.com/a/b?") and "X-Amz-Algorithm=AWS4" in url
    post = s3.generate_presigned_post("young-bucket", "a/${filename}", ExpiresIn=60)
    assert post["url"] == "https://young-bucket.s3.eu-west-1.amazonaws.com/"
    assert post["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256" and "AWSAccessKeyId" not in post["fields"]
