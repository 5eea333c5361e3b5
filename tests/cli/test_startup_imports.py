"""What a `dstack` command imports before it runs: only the command group it names, and httpx
without httpx's own command-line tool (click, pygments). Checked in a fresh interpreter each."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
sys.argv = {argv!r}
import dstack.cli.main, dstack.cli.runs
print(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))
"""
WATCHED = ["dstack.cli.fleets", "dstack.cli.volumes", "dstack.cli.backends", "pygments", "click", "httpx"]


def _imported(*argv: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=["dstack", *argv], watched=WATCHED)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_a_command_imports_no_group_and_no_httpx_cli() -> None:
    assert _imported("ps") == ["httpx"]


def test_a_group_imports_itself_only() -> None:
    assert _imported("fleet", "list") == ["dstack.cli.fleets", "httpx"]


def test_top_level_help_lists_every_group() -> None:
    assert set(_imported("--help")) >= {"dstack.cli.fleets", "dstack.cli.volumes", "dstack.cli.backends"}


def test_httpx_still_works_and_its_cli_says_why_it_is_absent() -> None:
    probe = ("import dstack.api.http, httpx\n"
             "assert httpx.Client and httpx.Response\n"
             "try:\n    httpx.main()\nexcept SystemExit as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "not loaded in this process" in out
