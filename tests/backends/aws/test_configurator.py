"""The AWS backend's form: live checks against the account (moto), field by field, through a
real server process; the same answers for the API and the CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.aws_harness import MotoAWS, seed_policy_user
from tests.harness import Env, Server

BUCKET = "dstack-test-bucket"


@pytest.fixture
def account(aws: MotoAWS) -> dict[str, str]:
    aws.become_admin()
    aws.create_bucket(BUCKET, "us-east-1")
    aws.create_bucket("dstack-eu-bucket", "eu-west-1")
    aws.create_bucket("someone-elses-bucket", "us-east-1")
    key_id, secret = seed_policy_user(aws, BUCKET)
    aws.enforce(True)
    return {"access_key_id": key_id, "secret_access_key": secret}


@pytest.fixture
def aws_server(env: Env, aws: MotoAWS) -> Server:
    env.extra.update(aws.server_env())
    server = Server(env).start()
    yield server
    server.stop()


def form(keys: dict[str, str], **fields: object) -> dict[str, object]:
    return {"type": "aws", "region": "us-east-1", "bucket": BUCKET,
            "credentials": {"type": "access_key", **keys}, **fields}


def check(server: Server, config: dict[str, object]) -> dict:
    with server.api() as api:
        response = api.post("/api/projects/main/backends/check", json=config)
        assert response.status_code == 200, response.text
        return response.json()


def errors(result: dict) -> dict[str | None, str]:
    return {e["field"]: e["message"] for e in result["errors"]}


def test_valid_form_offers_regions_buckets_and_subnets(aws_server: Server, account: dict[str, str]) -> None:
    result = check(aws_server, form(account))
    assert result["ok"], result
    assert "us-east-1" in result["choices"]["region"] and "eu-west-1" in result["choices"]["region"]
    assert BUCKET in result["choices"]["bucket"]
    assert all(s["value"].startswith("subnet-") for s in result["choices"]["subnet"])


def test_wrong_keys_error_on_the_key_fields(aws_server: Server, account: dict[str, str]) -> None:
    result = check(aws_server, form({"access_key_id": "AKIANOTAREALKEY12345", "secret_access_key": "x" * 40}))
    assert errors(result) == {"credentials.access_key_id": "AWS does not know this access key ID"}
    result = check(aws_server, form({**account, "secret_access_key": "wrong" * 8}))
    assert errors(result) == {
        "credentials.secret_access_key": "the secret access key does not match the access key ID"}


def test_bucket_in_another_region(aws_server: Server, account: dict[str, str]) -> None:
    result = check(aws_server, form(account, bucket="dstack-eu-bucket"))
    assert errors(result)["bucket"].startswith("bucket dstack-eu-bucket is in eu-west-1, not us-east-1")


def test_missing_and_unreadable_buckets(aws_server: Server, account: dict[str, str]) -> None:
    assert errors(check(aws_server, form(account, bucket="no-such-bucket-here"))) == {
        "bucket": "bucket no-such-bucket-here does not exist"}
    message = errors(check(aws_server, form(account, bucket="someone-elses-bucket")))["bucket"]
    assert message.startswith("bucket someone-elses-bucket is not readable with these credentials")


def test_bucket_can_be_typed_when_listing_is_denied(aws: MotoAWS, aws_server: Server) -> None:
    from dstack.backends.aws.iam_policy import policy

    aws.become_admin()
    aws.create_bucket(BUCKET, "us-east-1")
    no_list = policy(BUCKET)
    no_list["Statement"][0]["Action"] = ["s3:GetBucketLocation"]  # no s3:ListAllMyBuckets
    key_id, secret = aws.create_user("no-list", no_list)
    aws.enforce(True)
    result = check(aws_server, form({"access_key_id": key_id, "secret_access_key": secret}))
    assert result["ok"], result
    assert result["choices"]["bucket"] is None  # typed in by hand, not an empty dropdown


def test_subnets_and_regions(aws: MotoAWS, aws_server: Server, account: dict[str, str]) -> None:
    subnet = aws.client("ec2", "us-east-1").describe_subnets()["Subnets"][0]["SubnetId"]
    assert check(aws_server, form(account, subnet=subnet))["ok"]
    other = aws.client("ec2", "eu-west-1").describe_subnets()["Subnets"][0]["SubnetId"]
    message = errors(check(aws_server, form(account, subnet=other)))["subnet"]
    assert message.startswith(f"subnet {other} does not exist in us-east-1")
    assert errors(check(aws_server, form(account, subnet="vpc-123")))["subnet"].startswith("subnet: 'vpc-123' is not a subnet ID")
    message = errors(check(aws_server, form(account, region="us-est-1")))["region"]
    assert message.startswith("unknown region 'us-est-1': did you mean") and "us-east-1" in message


def test_missing_fields_are_named_and_the_rest_still_checked(aws_server: Server, account: dict[str, str]) -> None:
    # No bucket yet: it is named, and the keys are checked anyway (that is what fills Bucket's choices).
    result = check(aws_server, {"type": "aws", "region": "us-east-1",
                                "credentials": {"type": "access_key", **account}})
    assert errors(result) == {"bucket": "bucket: this field is required"}
    assert "us-east-1" in result["choices"]["region"] and BUCKET in result["choices"]["bucket"]
    result = check(aws_server, {"type": "aws", "region": "us-east-1",
                                "credentials": {"type": "access_key", "access_key_id": "AKIANOPE12345678",
                                                "secret_access_key": "y" * 40}})
    assert errors(result) == {"bucket": "bucket: this field is required",
                              "credentials.access_key_id": "AWS does not know this access key ID"}


def test_saving_validates_and_stores_credentials_encrypted_and_masked(
        env: Env, aws_server: Server, account: dict[str, str]) -> None:
    with aws_server.api() as api:
        bad = api.post("/api/projects/main/backends", json=form(account, bucket="dstack-eu-bucket"))
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "bucket"
        saved = api.post("/api/projects/main/backends", json=form(account))
        assert saved.status_code == 201, saved.text
        shown = next(b for b in saved.json()["backends"] if b["type"] == "aws")["config"]
        assert shown["credentials"]["secret_access_key"] == "********"
        assert account["secret_access_key"] not in json.dumps(api.get("/api/projects/main").json())
        # Saving the form back with the masked value keeps the stored secret.
        updated = api.put("/api/projects/main/backends", json={**shown, "subnet": None})
        assert updated.status_code == 200, updated.text
    db = (env.server_dir / "data" / "sqlite.db").read_bytes()
    assert account["secret_access_key"].encode() not in db and account["access_key_id"].encode() not in db
    rows = sqlite3.connect(env.server_dir / "data" / "sqlite.db").execute("select config from backends").fetchall()
    assert all(row[0].startswith("enc:v1:") for row in rows)


def test_default_credentials_from_env_and_profile(aws: MotoAWS, env: Env, account: dict[str, str]) -> None:
    config = {"type": "aws", "region": "us-east-1", "bucket": BUCKET, "credentials": {"type": "default"}}
    env.extra.update(aws.server_env())
    env.extra.update({"AWS_ACCESS_KEY_ID": account["access_key_id"],
                      "AWS_SECRET_ACCESS_KEY": account["secret_access_key"]})
    server = Server(env).start()
    try:
        assert check(server, config)["ok"]
    finally:
        server.stop()
    profile = env.home / "aws-credentials"
    profile.write_text(f"[default]\naws_access_key_id = {account['access_key_id']}\n"
                       f"aws_secret_access_key = {account['secret_access_key']}\n")
    del env.extra["AWS_ACCESS_KEY_ID"], env.extra["AWS_SECRET_ACCESS_KEY"]
    env.extra["AWS_SHARED_CREDENTIALS_FILE"] = str(profile)
    server = Server(env).start()
    try:
        assert check(server, config)["ok"]
    finally:
        server.stop()
    env.extra["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
    server = Server(env).start()
    try:
        assert errors(check(server, config)) == {"credentials.type": (
            "no default AWS credentials were found on the server's machine. Set AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY or a profile for the server, or use an Access key")}
    finally:
        server.stop()


def test_cli_gives_the_same_answers(env: Env, aws_server: Server, account: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "aws.yml"
    path.write_text(json.dumps(form(account, bucket="dstack-eu-bucket")))
    result = env.cli("backend", "check", "-f", str(path))
    assert result.returncode == 1
    assert "bucket: bucket dstack-eu-bucket is in eu-west-1, not us-east-1" in result.stdout
    result = env.cli("backend", "add", "-f", str(path))
    assert result.returncode == 1 and "is in eu-west-1, not us-east-1" in result.stderr
    path.write_text(json.dumps(form(account)))
    assert env.cli("backend", "add", "-f", str(path)).returncode == 0
    listed = env.cli("backend", "list").stdout
    assert "secret_access_key: '********'" in listed and account["secret_access_key"] not in listed


def test_iam_policy_command_prints_the_seed_policy_filled_in(env: Env) -> None:
    # The template as the user's AWS document (the seed) gives it, copied verbatim into tests/data.
    template = (Path(__file__).resolve().parents[2] / "data" / "seed-aws-iam-policy-template.json").read_text()
    expected = json.loads(template.replace("{bucket_name_under_score}", "my_awesome_project")
                          .replace("{bucket_name}", "my-awesome-project"))
    result = env.cli("aws", "iam-policy", "--bucket", "my-awesome-project")
    assert result.returncode == 0
    assert json.loads(result.stdout) == expected
    # --with adds the optional statements after the seed's, which stay as they are.
    extended = env.cli("aws", "iam-policy", "--bucket", "my-awesome-project", "--with", "volumes,clusters")
    assert extended.returncode == 0, extended.stderr
    statements = json.loads(extended.stdout)["Statement"]
    assert statements[:len(expected["Statement"])] == expected["Statement"]
    added = statements[len(expected["Statement"]):]
    actions = {a for s in added for a in s["Action"]}
    assert {"ec2:CreateVolume", "ec2:AttachVolume", "ec2:DeleteVolume", "ec2:CreatePlacementGroup"} <= actions
    # Deleting is limited to what dstack created (tagged with the bucket).
    for statement in added:
        if any(a.startswith("ec2:Delete") for a in statement["Action"]):
            assert statement["Condition"] == {"StringEquals": {"aws:ResourceTag/dstack_bucket": "my-awesome-project"}}
    unknown = env.cli("aws", "iam-policy", "--bucket", "b", "--with", "gpus")
    assert unknown.returncode == 2 and "unknown feature gpus; choose from volumes, clusters" in unknown.stderr


def test_api_check_needs_a_token(aws_server: Server) -> None:
    assert httpx.post(f"{aws_server.url}/api/projects/main/backends/check", json={}).status_code == 401


def test_backends_from_the_servers_config_file(env: Env, aws: MotoAWS, account: dict[str, str]) -> None:
    env.extra.update(aws.server_env())
    server_dir = env.home / ".dstack" / "server"
    server_dir.mkdir(parents=True)
    config = {"projects": [{"name": "team", "backends": [form(account, bucket="dstack-eu-bucket")]}]}
    (server_dir / "config.yml").write_text(json.dumps(config))
    (server_dir / "config.yml").write_text(json.dumps({"projects": [{"name": "../evil"}]}))
    result = env.cli("server", "--port", "0", timeout=60)
    assert result.returncode == 1 and "projects[0].name: '../evil' is not a valid project name" in result.stderr
    (server_dir / "config.yml").write_text(json.dumps(config))
    result = env.cli("server", "--port", "0", timeout=60)  # the same check as the form: it does not start
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "config.yml: projects[0].backends[0].bucket: bucket dstack-eu-bucket is in eu-west-1, not us-east-1" in \
        result.stderr
    config["projects"][0]["backends"] = [form(account)]
    (server_dir / "config.yml").write_text(json.dumps(config))
    server = Server(env).start()
    try:
        with server.api() as api:
            project = api.get("/api/projects/team").json()
        assert [b["type"] for b in project["backends"]] == ["aws"]
        assert project["backends"][0]["config"]["credentials"]["secret_access_key"] == "********"
    finally:
        server.stop()
