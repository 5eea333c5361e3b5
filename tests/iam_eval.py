"""Evaluates AWS calls against an IAM policy, the way IAM does for the parts our policies use:
Allow/Deny statements, wildcard actions and resource ARNs, and StringEquals conditions
(e.g. `aws:ResourceTag/dstack_bucket`, which moto ignores). Each recorded call is first turned
into the (action, resource, context) requests IAM would authorize for it."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AuthRequest:
    action: str
    resource: str
    context: dict[str, str] = field(default_factory=dict, hash=False)


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _matches(pattern: str, value: str, case_sensitive: bool) -> bool:
    if not case_sensitive:
        pattern, value = pattern.lower(), value.lower()
    # IAM wildcards: * and ?; fnmatch also treats [..] specially, which IAM ARNs never contain.
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _condition_holds(condition: dict[str, Any], context: dict[str, str]) -> bool:
    for operator, checks in condition.items():
        for key, expected in checks.items():
            actual = context.get(key)
            if operator == "StringEquals" and actual not in _listify(expected):
                return False
            if operator == "StringLike" and not any(_matches(e, actual or "", True) for e in _listify(expected)):
                return False
            if operator not in ("StringEquals", "StringLike"):
                raise ValueError(f"condition operator {operator} is not supported by this evaluator")
    return True


def allowed(policy: dict[str, Any], request: AuthRequest) -> bool:
    decision = False
    for stmt in _listify(policy["Statement"]):
        if not any(_matches(a, request.action, False) for a in _listify(stmt.get("Action", []))):
            continue
        if not any(_matches(r, request.resource, True) for r in _listify(stmt.get("Resource", []))):
            continue
        if not _condition_holds(stmt.get("Condition", {}), request.context):
            continue
        if stmt["Effect"] == "Deny":
            return False
        decision = True
    return decision


# --- from recorded calls to the requests IAM authorizes --------------------------------------

S3_ACTIONS = {
    "ListBuckets": ("s3:ListAllMyBuckets", "all"), "GetBucketLocation": ("s3:GetBucketLocation", "bucket"),
    "ListObjectsV2": ("s3:ListBucket", "bucket"), "ListObjects": ("s3:ListBucket", "bucket"),
    "HeadBucket": ("s3:ListBucket", "bucket"), "GetObject": ("s3:GetObject", "object"),
    "HeadObject": ("s3:GetObject", "object"), "PutObject": ("s3:PutObject", "object"),
    "CreateMultipartUpload": ("s3:PutObject", "object"), "UploadPart": ("s3:PutObject", "object"),
    "CompleteMultipartUpload": ("s3:PutObject", "object"), "DeleteObject": ("s3:DeleteObject", "object"),
    "GetBucketAcl": ("s3:GetBucketAcl", "bucket"),
}
IAM_RESOURCE = {
    "GetRole": ("role", "RoleName"), "CreateRole": ("role", "RoleName"), "AttachRolePolicy": ("role", "RoleName"),
    "TagRole": ("role", "RoleName"), "CreatePolicy": ("policy", "PolicyName"), "TagPolicy": ("policy", "PolicyName"),
    "GetInstanceProfile": ("instance-profile", "InstanceProfileName"),
    "CreateInstanceProfile": ("instance-profile", "InstanceProfileName"),
    "AddRoleToInstanceProfile": ("instance-profile", "InstanceProfileName"),
    "TagInstanceProfile": ("instance-profile", "InstanceProfileName"),
}
IMPLIED_TAGGING = {"CreateRole": "iam:TagRole", "CreatePolicy": "iam:TagPolicy",
                   "CreateInstanceProfile": "iam:TagInstanceProfile", "CreateSecret": "secretsmanager:TagResource"}


def requests_for(call: dict[str, Any], account: str,
                 instance_tags: Callable[[str], dict[str, str]]) -> list[AuthRequest]:
    """`call` is one line of DSTACK_AWS_AUDIT_LOG: {service, operation, region, params}."""
    service, op, region, params = call["service"], call["operation"], call["region"], call["params"]
    if service == "sts" and op == "GetCallerIdentity":
        return []  # AWS authorizes it for everyone
    if service == "s3":
        action, kind = S3_ACTIONS[op]
        resource = {"all": "arn:aws:s3:::*", "bucket": f"arn:aws:s3:::{params.get('Bucket')}",
                    "object": f"arn:aws:s3:::{params.get('Bucket')}/{params.get('Key')}"}[kind]
        return [AuthRequest(action, resource)]
    if service == "ec2":
        if op == "TerminateInstances":
            return [AuthRequest("ec2:TerminateInstances", f"arn:aws:ec2:{region}:{account}:instance/{iid}",
                                {f"aws:ResourceTag/{k}": v for k, v in instance_tags(iid).items()})
                    for iid in params["InstanceIds"]]
        if op == "DeletePlacementGroup":
            group = params["GroupName"]
            return [AuthRequest("ec2:DeletePlacementGroup", f"arn:aws:ec2:{region}:{account}:placement-group/{group}",
                                {f"aws:ResourceTag/{k}": v for k, v in instance_tags(group).items()})]
        if op == "DeleteVolume":
            volume = params["VolumeId"]
            return [AuthRequest("ec2:DeleteVolume", f"arn:aws:ec2:{region}:{account}:volume/{volume}",
                                {f"aws:ResourceTag/{k}": v for k, v in instance_tags(volume).items()})]
        out = [AuthRequest(f"ec2:{op}", "*")]
        if params.get("TagSpecifications") and not params.get("DryRun"):
            out.append(AuthRequest("ec2:CreateTags", "*"))
        if op == "RunInstances" and params.get("IamInstanceProfile"):
            role = params["IamInstanceProfile"]["Name"]  # our profiles hold the role of the same name
            out.append(AuthRequest("iam:PassRole", f"arn:aws:iam::{account}:role/{role}"))
        return out
    if service == "iam":
        kind, key = IAM_RESOURCE[op]
        arn = f"arn:aws:iam::{account}:{kind}/{params[key]}"
        out = [AuthRequest(f"iam:{op}", arn)]
        if op in IMPLIED_TAGGING and params.get("Tags"):
            out.append(AuthRequest(IMPLIED_TAGGING[op], arn))
        return out
    if service == "logs":
        if op == "DescribeLogGroups":
            return [AuthRequest("logs:DescribeLogGroups", f"arn:aws:logs:{region}:{account}:log-group:*")]
        group = f"arn:aws:logs:{region}:{account}:log-group:{params['logGroupName']}"
        if op == "CreateLogStream":
            return [AuthRequest("logs:CreateLogStream", f"{group}:log-stream:{params['logStreamName']}")]
        return [AuthRequest(f"logs:{op}", f"{group}:*")]
    if service == "secretsmanager":
        name = params.get("Name") or params.get("SecretId")
        arn = f"arn:aws:secretsmanager:{region}:{account}:secret:{name}-AbCdEf"
        out = [AuthRequest(f"secretsmanager:{op}", arn)]
        if op in IMPLIED_TAGGING and params.get("Tags"):
            out.append(AuthRequest(IMPLIED_TAGGING[op], arn))
        return out
    raise ValueError(f"no IAM mapping for {service}:{op}: add it to tests/iam_eval.py")


def violations(policy: dict[str, Any], calls: list[dict[str, Any]], account: str,
               instance_tags: Callable[[str], dict[str, str]]) -> list[str]:
    found = []
    for call in calls:
        for request in requests_for(call, account, instance_tags):
            if not allowed(policy, request):
                found.append(f"{call['service']}:{call['operation']} -> {request.action} on {request.resource} "
                             f"{request.context or ''}")
    return found
