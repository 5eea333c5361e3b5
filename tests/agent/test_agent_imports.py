"""A local job's agent starts for every job: it imports no AWS client, HTTP client, TLS or email
parser until a job needs one (secrets or termination on AWS, CloudWatch logs, Docker's API)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["dstack.storage.sigv4", "http.client", "ssl", "email.parser", "urllib.request"]


def test_the_agent_imports_no_aws_or_http_client_at_start() -> None:
    probe = f"import json, sys, dstack.agent.main\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_the_aws_paths_still_import_their_client() -> None:
    probe = ("import sys\nfrom dstack.agent import cloud, container, metadata_guard\n"
             "assert cloud.fetch_secrets({'type': 'none'}) == {}\n"
             "rule = metadata_guard._rule()\nconn = container._unix_connection()\n"
             "print(rule[rule.index('--mark') + 1], conn.__mro__[1].__module__, 'dstack.storage.sigv4' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == [hex(0x64737463), "http.client", "True"]
