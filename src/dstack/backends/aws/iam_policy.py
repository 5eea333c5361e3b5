"""The least-privilege IAM policy for the user whose keys the AWS backend uses.

`data/iam-policy-template.json` is the template from the user's AWS document, verbatim.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def template() -> str:
    return resources.files("dstack.backends.aws").joinpath("data/iam-policy-template.json").read_text()


def bucket_under_score(bucket: str) -> str:
    return bucket.replace("-", "_")


def render(bucket: str) -> str:
    """The template with `{bucket_name}` and `{bucket_name_under_score}` filled in."""
    return template().replace("{bucket_name_under_score}", bucket_under_score(bucket)).replace(
        "{bucket_name}", bucket)


# Optional features whose EC2 actions the seed's policy does not grant: `dstack aws iam-policy
# --with volumes,clusters` adds their statements. Deleting is limited to what dstack created (tagged
# with the bucket); a registered volume (`volume_id`) is never deleted, only unregistered.
OPTIONAL_ACTIONS: dict[str, tuple[list[str], list[str]]] = {
    # feature: (actions on any resource, actions on the bucket's own resources only)
    "volumes": (["ec2:DescribeVolumes", "ec2:CreateVolume", "ec2:AttachVolume", "ec2:DetachVolume"],
                ["ec2:DeleteVolume"]),
    "clusters": (["ec2:DescribePlacementGroups", "ec2:CreatePlacementGroup"], ["ec2:DeletePlacementGroup"]),
    # Launching into a reservation is RunInstances (already granted); reading its type and zone is not.
    "reservations": (["ec2:DescribeCapacityReservations"], []),
}


def optional_statements(bucket: str, features: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for feature in features:
        if feature not in OPTIONAL_ACTIONS:
            raise ValueError(f"unknown feature {feature!r}: choose from {', '.join(OPTIONAL_ACTIONS)}")
        anywhere, owned = OPTIONAL_ACTIONS[feature]
        statements.append({"Sid": f"Dstack{feature.capitalize()}", "Effect": "Allow", "Action": anywhere,
                           "Resource": "*"})
        if owned:
            statements.append({"Sid": f"Dstack{feature.capitalize()}Delete", "Effect": "Allow", "Action": owned,
                               "Resource": "*",
                               "Condition": {"StringEquals": {"aws:ResourceTag/dstack_bucket": bucket}}})
    return statements


def policy(bucket: str, features: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The seed's policy for `bucket`, plus the optional statements of `features`."""
    result = json.loads(render(bucket))
    result["Statement"] = [*result["Statement"], *optional_statements(bucket, features)]
    return result


def instance_role_policy(bucket: str) -> dict[str, Any]:
    """What an instance may do through its profile `dstack_role_…`: its bucket, its log groups,
    the bucket's secrets (read), and terminating instances tagged with the bucket (itself)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "s3:GetBucketLocation"],
             "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]},
            {"Effect": "Allow",
             "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
             "Resource": [f"arn:aws:logs:*:*:log-group:/dstack/jobs/{bucket}*",
                          f"arn:aws:logs:*:*:log-group:/dstack/jobs/{bucket}*:*",
                          f"arn:aws:logs:*:*:log-group:/dstack/runners/{bucket}*",
                          f"arn:aws:logs:*:*:log-group:/dstack/runners/{bucket}*:*"]},
            {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
             "Resource": [f"arn:aws:secretsmanager:*:*:secret:/dstack/{bucket}/secrets/*",
                          f"arn:aws:secretsmanager:*:*:secret:/dstack/{bucket}/credentials/*"]},
            {"Effect": "Allow", "Action": ["ec2:TerminateInstances"], "Resource": "*",
             "Condition": {"StringEquals": {"aws:ResourceTag/dstack_bucket": bucket}}},
        ],
    }
