"""The agent's command line: one job (`--job`), a fleet instance's jobs (`--instance`), or what this
machine has (`--probe`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path

from dstack.agent.runner import JobRunner
from dstack.storage import storage_from_url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dstack.agent")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--job", help="the job's prefix in the bucket")
    target.add_argument("--instance", help="a fleet instance's prefix: run the jobs assigned there")
    target.add_argument("--probe", action="store_true", help="print what this machine has (JSON) and exit")
    parser.add_argument("--storage", help="bucket URL, e.g. file:///path or s3://bucket")
    parser.add_argument("--workdir", help="a fresh directory to run the job in")
    return parser


# Built once, at import: the local backend's fork server imports this module, so each agent it forks
# parses its arguments without building the parser (and compiling argparse's patterns) again.
PARSER = _parser()


def main(argv: list[str] | None = None) -> int:
    parser = PARSER
    args = parser.parse_args(argv)
    if args.probe:
        from dstack.agent.machine import probe  # noqa: PLC0415

        print(json.dumps(probe()))
        return 0
    if not args.storage or not args.workdir:
        parser.error("--storage and --workdir are required with --job and --instance")
    if args.instance:
        from dstack.agent.instance import InstanceAgent  # noqa: PLC0415

        agent = InstanceAgent(storage_from_url(args.storage), args.instance, Path(args.workdir))
        signal.signal(signal.SIGTERM, lambda *_: agent.terminate())
        return agent.run()
    runner = JobRunner(storage_from_url(args.storage), args.job, Path(args.workdir))
    # A terminate (SIGTERM to the agent) is handled like a stop request, so the status is written.
    signal.signal(signal.SIGTERM, lambda *_: runner.stop({"reason": "agent terminated"}))
    try:
        return runner.run()
    finally:
        sys.stdout.flush()
        # When it ended: what a local job held counts until the server has seen the end (see
        # dstack/backends/local/capacity.py).
        with contextlib.suppress(OSError):
            (Path(args.workdir) / "exited").touch()


if __name__ == "__main__":
    sys.exit(main())
