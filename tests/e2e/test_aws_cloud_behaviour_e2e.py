"""What moto lets through and real AWS would not: each test plays a documented behaviour of AWS
through the fault proxy (tests/fault_proxy.py; sources in tests/README.md) and fails on the code
before its fix."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator

import pytest

from dstack.backends.aws.iam_policy import policy
from tests.aws_harness import ACCOUNT, MotoAWS
from tests.e2e.aws_stack import BUCKET, REGION, Stack, make_stack
from tests.fault_proxy import Request
from tests.harness import Env, wait_for
from tests.iam_eval import violations


@pytest.fixture
def stack(request: pytest.FixtureRequest, env: Env, aws: MotoAWS) -> Iterator[Stack]:
    yield from make_stack(request, env, aws)

def _cloudwatch_batch_too_large(request: object) -> tuple[int, bytes] | None:
    """CloudWatch refuses a PutLogEvents batch over 1,048,576 bytes (each message's UTF-8 bytes + 26);
    moto does not."""
    headers = {k.lower(): v for k, v in request.headers.items()}  # type: ignore[attr-defined]
    if headers.get("x-amz-target") != "Logs_20140328.PutLogEvents":
        return None
    events = json.loads(request.body)["logEvents"]  # type: ignore[attr-defined]
    if sum(len(e["message"].encode()) + 26 for e in events) <= 1_048_576:
        return None
    return 400, json.dumps({"__type": "InvalidParameterException", "message": "Upload too large"}).encode()


def test_big_log_batches_and_transient_errors_lose_no_line(stack: Stack) -> None:
    """1,000 lines of 1.1 KB (over CloudWatch's batch limit in one batch) while every 6th call of the
    agent fails with a 500: the job ends `done` and every line is readable."""
    from tests.fault_proxy import S3_INTERNAL_ERROR, FaultProxy, every_nth

    errors = every_nth(6, S3_INTERNAL_ERROR)
    proxy = FaultProxy(stack.aws.port, lambda r: _cloudwatch_batch_too_large(r) or errors(r))
    stack.cloud.vm_aws_proxy = proxy
    try:
        (stack.repo / ".dstack.yml").write_text(
            "type: task\nname: aws-chatty\ncommands:\n"
            "  - python3 -c \"print(''.join('line %d %s\\\\n' % (i, 'x' * 1100) for i in range(1000)), end='')\"\n"
            "resources:\n  cpu: 2..\n  memory: 4GB..\n")
        result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=240)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        assert proxy.faults >= 3, proxy.faults
        lines = stack.env.cli("logs", "-f", "aws-chatty", cwd=stack.repo, timeout=120).stdout.splitlines()
        numbered = [line.split()[1] for line in lines if line.startswith("line ")]
        if numbered != [str(i) for i in range(1000)]:  # what the server knew, to tell why (seen once in CI)
            with stack.server.api() as api:
                job = api.get("/api/projects/main/runs/aws-chatty").json()["jobs"][-1]
            applied = sum(1 for line in result.stdout.splitlines() if line.startswith("line "))
            pytest.fail(f"logs -f read {len(numbered)} lines (apply showed {applied}); job: {job}; "
                        f"server log tail: {stack.server.output()[-3000:]}")
    finally:
        proxy.stop()


def _ec2_not_found_at_first(seconds: float) -> Callable[[Request], tuple[int, bytes] | None]:
    """EC2's eventual consistency: Describe/TerminateInstances of an instance answer NotFound for a
    while after it is first asked about (documented in the EC2 API reference, "Eventual consistency");
    here the first TerminateInstances of each instance too."""
    first_seen: dict[str, float] = {}
    terminated_once: set[str] = set()

    def rule(request: Request) -> tuple[int, bytes] | None:
        form = urllib.parse.parse_qs(request.body.decode(errors="replace"))
        action = form.get("Action", [""])[0]
        if action not in ("DescribeInstances", "TerminateInstances"):
            return None
        ids = [v[0] for k, v in form.items() if k.startswith("InstanceId.")]
        if not ids:
            return None
        now = time.monotonic()
        fresh = [i for i in ids if action == "TerminateInstances" and i not in terminated_once]
        terminated_once.update(fresh)
        if not fresh and all(now - first_seen.setdefault(i, now) >= seconds for i in ids):
            return None
        body = (f"<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>The instance ID "
                f"'{ids[0]}' does not exist</Message></Error></Errors><RequestID>x</RequestID></Response>")
        return 400, body.encode()

    return rule


def test_ec2_not_found_right_after_launch_is_not_instance_lost(stack: Stack) -> None:
    """For its first seconds EC2 does not know the new instance: the job still runs to `done`
    (today's code failed it as "instance lost" and left the instance running)."""
    stack.proxy.rule = _ec2_not_found_at_first(8)
    (stack.repo / ".dstack.yml").write_text(
        "type: task\nname: aws-young\ncommands: [echo young, sleep 4]\nresources: {cpu: 2.., memory: 4GB..}\n")
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0 and "aws-young: done" in result.stdout, result.stdout + result.stderr
    assert stack.proxy.faults >= 1
    wait_for(lambda: all(i["State"]["Name"] == "terminated" for i in stack.instances()), 30,
             message="the instance to be terminated")
    # ...by the job's own teardown, retried until EC2 knew it (the first answer was NotFound), not left
    # to the orphan reaper.
    [instance] = stack.instances()
    assert f"orphaned aws instance {instance['InstanceId']}" not in stack.server.output()
    wait_for(lambda: len([c for c in stack.calls() if c["operation"] == "TerminateInstances"
                          and instance["InstanceId"] in c["params"].get("InstanceIds", [])]) >= 2, 30,
             message="the server to terminate the instance again after EC2's NotFound")


def test_instance_profile_propagation_is_retried_not_a_failed_offer(stack: Stack) -> None:
    """A fresh instance profile: RunInstances answers that it has no roles yet (twice). The launch
    waits and succeeds on the same offer; no attempt is recorded as failed."""
    calls = {"n": 0}

    def rule(request: Request) -> tuple[int, bytes] | None:
        if b"Action=RunInstances" not in request.body:
            return None
        calls["n"] += 1
        if calls["n"] > 2:
            return None
        body = ("<Response><Errors><Error><Code>InvalidParameterValue</Code><Message>IAM Instance Profile "
                f"\"arn:aws:iam::{ACCOUNT}:instance-profile/dstack_role_x\" has no associated IAM Roles</Message>"
                "</Error></Errors><RequestID>x</RequestID></Response>")
        return 400, body.encode()

    stack.proxy.rule = rule
    (stack.repo / ".dstack.yml").write_text(
        "type: task\nname: aws-fresh\ncommands: [echo fresh]\nresources: {cpu: 2.., memory: 4GB..}\n")
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0 and "fresh" in result.stdout, result.stdout + result.stderr
    with stack.server.api() as api:
        attempts = api.get("/api/projects/cloud/runs/aws-fresh").json()["jobs"][0]["attempts"]
    assert [a["ok"] for a in attempts] == [True] and calls["n"] == 3, (attempts, calls)


def test_secrets_manager_gets_a_version_only_when_a_value_changes_and_loses_deleted_secrets(stack: Stack) -> None:
    """Secrets Manager has a version quota: jobs with an unchanged secret write no new version; a
    changed value writes one; a secret deleted in dstack is deleted there too (no recovery window)."""
    sid = f"/dstack/{BUCKET}/secrets/cloud/HF_TOKEN"

    def writes() -> list[str]:
        return [c["operation"] for c in stack.calls()
                if c["operation"] in ("CreateSecret", "PutSecretValue") and c["params"].get("Name", c["params"].get(
                    "SecretId")) == sid]

    (stack.repo / ".dstack.yml").write_text(
        "type: task\nname: aws-sec\ncommands: ['echo \"t=$HF_TOKEN\"']\nresources: {cpu: 2.., memory: 4GB..}\n")
    for _ in range(2):
        assert stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180).returncode == 0
    assert writes() == ["CreateSecret"]
    with stack.server.api() as api:
        api.put("/api/projects/cloud/secrets/HF_TOKEN", json={"value": "hf_rotated-value"}).raise_for_status()
    assert stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180).returncode == 0
    assert writes() == ["CreateSecret", "PutSecretValue"]
    sm = stack.aws.client("secretsmanager", REGION)
    assert sm.get_secret_value(SecretId=sid)["SecretString"] == "hf_rotated-value"
    with stack.server.api() as api:
        assert api.delete("/api/projects/cloud/secrets/HF_TOKEN").status_code == 204
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.get_secret_value(SecretId=sid)
    assert violations(policy(BUCKET), stack.calls(), ACCOUNT, stack.instance_tags) == []


def _hide_from_filter_log_events(hidden: Callable[[dict, float], bool]) -> Callable[[Request, bytes], bytes]:
    """A transform of FilterLogEvents answers that leaves out the events `hidden(event, now_ms)` names."""

    def transform(request: Request, body: bytes) -> bytes:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("x-amz-target") != "Logs_20140328.FilterLogEvents":
            return body
        page = json.loads(body)
        now_ms = time.time() * 1000
        page["events"] = [e for e in page.get("events", []) if not hidden(e, now_ms)]
        return json.dumps(page).encode()

    return transform


def _cloudwatch_search_lag(seconds: float) -> Callable[[Request, bytes], bytes]:
    """CloudWatch shows an event to FilterLogEvents only some time after it was written (ingestion and
    indexing lag; documented as eventual consistency of the search APIs); moto shows it at once."""
    return _hide_from_filter_log_events(lambda e, now_ms: e.get("ingestionTime", 0) > now_ms - seconds * 1000)


def test_the_last_lines_arrive_despite_cloudwatch_search_lag(stack: Stack) -> None:
    """The job's last lines (often the traceback) are searchable only seconds after the job ended: the
    agent says how many lines it wrote and the server's reader waits for them all."""
    stack.proxy.transform = _cloudwatch_search_lag(4)
    (stack.repo / ".dstack.yml").write_text(
        "type: task\nname: aws-lag\ncommands: ['for i in $(seq 1 30); do echo \"lag line $i\"; done']\n"
        "resources: {cpu: 2.., memory: 4GB..}\n")
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("lag line ")]
    assert lines == [f"lag line {i}" for i in range(1, 31)], result.stdout[-1500:]


def _filter_log_events_rate_limit(per_second: int) -> Callable[[Request], tuple[int, bytes] | None]:
    """CloudWatch allows FilterLogEvents 5 times a second per account and region, then answers
    ThrottlingException (CloudWatch Logs quotas); moto has no limit."""
    calls: list[float] = []
    lock = threading.Lock()

    def rule(request: Request) -> tuple[int, bytes] | None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("x-amz-target") != "Logs_20140328.FilterLogEvents":
            return None
        with lock:
            now = time.monotonic()
            calls[:] = [t for t in calls if now - t < 1.0]
            if len(calls) >= per_second:
                return 400, json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
            calls.append(now)
        return None

    return rule


def test_several_followers_share_the_filter_log_events_quota(stack: Stack) -> None:
    """Three followers of one run under CloudWatch's 5 requests/s: the server keeps all of them under
    the quota (one rate limit for the region, each read waits its turn), none is aborted, each sees
    every line."""
    stack.proxy.rule = _filter_log_events_rate_limit(5)
    (stack.repo / ".dstack.yml").write_text(
        "type: task\nname: aws-followed\ncommands: ['for i in $(seq 1 40); do echo \"f line $i\"; sleep 0.1; done']\n"
        "resources: {cpu: 2.., memory: 4GB..}\n")
    assert stack.env.cli("apply", "-y", "-d", cwd=stack.repo).returncode == 0
    wait_for(lambda: stack.run_status("aws-followed") == "running", 60, message="the run to start")
    followers = [stack.env.popen_cli("logs", "-f", "aws-followed", cwd=stack.repo) for _ in range(3)]
    outs = [f.communicate(timeout=120)[0] for f in followers]
    for follower, out in zip(followers, outs, strict=True):
        assert follower.returncode == 0, out
        assert [line for line in out.splitlines() if line.startswith("f line ")] == \
            [f"f line {i}" for i in range(1, 41)], out[-800:]
    assert stack.proxy.faults == 0, f"the server went over the quota {stack.proxy.faults} times"


def _cloudwatch_indexes_late(message: str, seconds: float) -> Callable[[Request, bytes], bytes]:
    """CloudWatch may make an event searchable after later ones of the same stream (ingestion is
    eventually consistent, per event); moto never does. Here one event shows up `seconds` late."""
    return _hide_from_filter_log_events(
        lambda e, now_ms: e["message"] == message and e.get("ingestionTime", 0) > now_ms - seconds * 1000)


def test_an_event_indexed_after_later_ones_is_not_skipped(stack: Stack) -> None:
    """The reader looks back for events that became searchable late; the old `{ms}:{n}` position
    skipped them for good."""
    stack.proxy.transform = _cloudwatch_indexes_late("late 5", 3)
    (stack.repo / ".dstack.yml").write_text(
        "type: task\nname: aws-late\ncommands: ['for i in $(seq 1 10); do echo \"late $i\"; sleep 0.1; done',"
        " 'sleep 5']\nresources: {cpu: 2.., memory: 4GB..}\n")
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("late ")]
    assert sorted(lines, key=lambda line: int(line.split()[1])) == [f"late {i}" for i in range(1, 11)], "\n".join(lines)
