"""The policy evaluator used to prove least privilege, and the instance role's own policy."""

from __future__ import annotations

from dstack.backends.aws.iam_policy import instance_role_policy, policy
from tests.iam_eval import AuthRequest, allowed, requests_for, violations

ACCOUNT = "123456789012"
BUCKET = "my-awesome-project"
SEED = policy(BUCKET)


def call(service: str, operation: str, **params: object) -> dict:
    return {"service": service, "operation": operation, "region": "us-east-1", "params": params}


def tags_of(instance_id: str) -> dict[str, str]:
    return {"i-ours": {"dstack_bucket": BUCKET}, "i-theirs": {"dstack_bucket": "other"}}.get(instance_id, {})


def check(*calls: dict) -> list[str]:
    return violations(SEED, list(calls), ACCOUNT, tags_of)


def test_calls_the_backend_makes_are_allowed() -> None:
    assert check(
        call("s3", "ListBuckets"), call("s3", "GetBucketLocation", Bucket=BUCKET),
        call("s3", "PutObject", Bucket=BUCKET, Key="dstack/x"), call("s3", "ListObjectsV2", Bucket=BUCKET),
        call("ec2", "RunInstances", IamInstanceProfile={"Name": "dstack_role_my_awesome_project"},
             TagSpecifications=[{}]),
        call("ec2", "TerminateInstances", InstanceIds=["i-ours"]),
        call("iam", "CreateRole", RoleName="dstack_role_my_awesome_project", Tags=[{}]),
        call("iam", "CreatePolicy", PolicyName="dstack_policy_my_awesome_project", Tags=[{}]),
        call("iam", "CreateInstanceProfile", InstanceProfileName="dstack_role_my_awesome_project"),
        call("logs", "CreateLogGroup", logGroupName=f"/dstack/jobs/{BUCKET}/main"),
        call("logs", "CreateLogStream", logGroupName=f"/dstack/jobs/{BUCKET}/main", logStreamName="r/j"),
        call("logs", "FilterLogEvents", logGroupName=f"/dstack/jobs/{BUCKET}/main"),
        call("secretsmanager", "CreateSecret", Name=f"/dstack/{BUCKET}/secrets/main/TOKEN", Tags=[{}]),
        call("sts", "GetCallerIdentity"),
    ) == []


def test_calls_outside_the_policy_are_caught() -> None:
    found = check(
        call("ec2", "TerminateInstances", InstanceIds=["i-theirs"]),  # the tag condition fails
        call("s3", "GetObject", Bucket="another-bucket", Key="k"),
        call("iam", "CreateRole", RoleName="admin_role"),
        call("logs", "PutLogEvents", logGroupName=f"/dstack/jobs/{BUCKET}/main"),  # instances only
        call("logs", "CreateLogGroup", logGroupName="/aws/other"),
        call("secretsmanager", "GetSecretValue", SecretId="/prod/db-password"),
        call("ec2", "RunInstances", IamInstanceProfile={"Name": "AdminProfile"}),  # iam:PassRole
    )
    assert len(found) == 7, found


def test_unknown_operations_are_not_silently_allowed() -> None:
    import pytest

    with pytest.raises(ValueError, match="no IAM mapping"):
        requests_for(call("rds", "DeleteDBInstance"), ACCOUNT, tags_of)


def test_instance_role_allows_what_the_agent_does_and_nothing_of_other_buckets() -> None:
    role = instance_role_policy(BUCKET)
    group = f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/dstack/jobs/{BUCKET}/main"
    ours = [
        AuthRequest("s3:GetObject", f"arn:aws:s3:::{BUCKET}/dstack/code/x.tar.gz"),
        AuthRequest("s3:PutObject", f"arn:aws:s3:::{BUCKET}/dstack/runs/x/status.json"),
        AuthRequest("s3:ListBucket", f"arn:aws:s3:::{BUCKET}"),
        AuthRequest("logs:PutLogEvents", f"{group}:log-stream:run/job"),
        AuthRequest("secretsmanager:GetSecretValue",
                    f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:/dstack/{BUCKET}/secrets/main/T-AbCdEf"),
        AuthRequest("ec2:TerminateInstances", "arn:aws:ec2:us-east-1:1:instance/i-1",
                    {"aws:ResourceTag/dstack_bucket": BUCKET}),
    ]
    assert all(allowed(role, r) for r in ours)
    theirs = [
        AuthRequest("s3:GetObject", "arn:aws:s3:::other/dstack/code/x.tar.gz"),
        AuthRequest("ec2:TerminateInstances", "arn:aws:ec2:us-east-1:1:instance/i-2",
                    {"aws:ResourceTag/dstack_bucket": "other"}),
        AuthRequest("ec2:RunInstances", "*"),
        AuthRequest("secretsmanager:GetSecretValue", f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:/prod/x"),
    ]
    assert not any(allowed(role, r) for r in theirs)
