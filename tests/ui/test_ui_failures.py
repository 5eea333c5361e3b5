"""A launch AWS refuses (the credentials' policy denies ec2:RunInstances): one readable line, the
backend given up after the first offer, a WARNING in the server's log, a warning on the project's
settings page until the backend works again; the run page fits 1366 px with the reason once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.aws_harness import MotoAWS
from tests.e2e.aws_stack import Stack, make_stack
from tests.harness import Env, wait_for
from tests.ui.conftest import login, screenshot

DENY_RUN = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "ec2:RunInstances", "Resource": "*"}]}


@pytest.fixture
def stack(request: pytest.FixtureRequest, env: Env, aws: MotoAWS) -> Iterator[Stack]:
    yield from make_stack(request, env, aws)


def test_denied_launch_reads_as_one_line_everywhere(stack: Stack, page, tmp_path: Path) -> None:  # noqa: ANN001
    stack.aws.client("iam").put_user_policy(UserName="dstack-user", PolicyName="deny-run-instances",
                                            PolicyDocument=json.dumps(DENY_RUN))
    (stack.repo / ".dstack.yml").write_text("type: task\nname: denied\ncommands: [echo hi]\n"
                                            "resources: {cpu: 2.., memory: 4GB..}\n")
    result = stack.env.cli("apply", "-y", cwd=stack.repo, timeout=120)
    assert result.returncode != 0
    with stack.server.api() as api:
        run = wait_for(lambda: (r := api.get("/api/projects/cloud/runs/denied").json())["status"] == "failed" and r,
                       60, message="the run to fail")
        attempts = run["jobs"][0]["attempts"]
        # Not a capacity problem: the backend is given up after its first offer.
        assert len(attempts) == 1, attempts
        reason = run["reason"]
        assert "(ec2:RunInstances)" in reason and "statement 6 of dstack's policy" in reason, reason
        assert "dstack aws iam-policy --bucket" in reason and "<" not in reason and "\n" not in reason
        warning = next(b for b in api.get("/api/projects/cloud").json()["backends"] if b["type"] == "aws")["warning"]
        assert warning and "(ec2:RunInstances)" in warning
    assert "WARNING" in stack.server.output() and "cannot launch" in stack.server.output()

    # `dstack ps`: one short line; `-v`: the whole reason.
    row = next(line for line in stack.env.cli("ps", "-a", cwd=stack.repo).stdout.splitlines()
               if line.startswith("denied "))
    assert "failed (every offer failed to launch" in row and "…" in row
    assert "statement 6" in stack.env.cli("ps", "-a", "-v", cwd=stack.repo).stdout.replace("\n", " ")

    login(page, stack.server.url, stack.env.token())
    page.goto(f"{stack.server.url}/projects/cloud/runs/denied")
    page.locator("#status", has_text="failed").wait_for()
    page.locator("#reason", has_text="(ec2:RunInstances)").wait_for()
    assert page.locator("#reason code", has_text="dstack aws iam-policy").count() == 1  # code shown as code
    assert page.evaluate("document.documentElement.scrollWidth") <= 1366
    # The whole reason once: the status history points at it, no empty log pane.
    page.locator("#logs-empty").wait_for()
    assert page.locator("#logs").is_hidden() and page.locator("#logs-download").is_hidden()
    assert page.locator("#history tr", has_text="failed").inner_text().endswith("the reason above")
    assert page.get_by_text("is not authorized to perform").count() == 2  # under the title, in the attempt
    screenshot(page, "run-failed", tmp_path)
    page.goto(f"{stack.server.url}/projects/cloud")
    row = page.locator("#runs tr", has_text="denied")
    row.wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 1366
    assert row.bounding_box()["height"] < 100  # the reason is one shortened line (was ~1,000 px of XML)
    page.goto(f"{stack.server.url}/projects/cloud/settings")
    page.locator("#backends .warning", has_text="could not launch").wait_for()
    screenshot(page, "settings-warning", tmp_path)
