"""Crash points for tests: DSTACK_FAILPOINT=<step> makes the server process exit at once (as a
`kill -9` would) when it reaches that step. A test facility; never set it in production.

Steps: after-submit, after-claim, before-launch, after-launch, after-record, after-running,
after-finish (see docs/server.md).
"""

from __future__ import annotations

import os
import sys

STEPS = ("after-submit", "after-claim", "before-launch", "after-launch", "after-record", "after-running",
         "after-finish")


def failpoint(step: str) -> None:
    if os.environ.get("DSTACK_FAILPOINT") == step:
        print(f"dstack: failpoint {step}: exiting", file=sys.stderr, flush=True)
        os._exit(137)
