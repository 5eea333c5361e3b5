"""Where things live in a project's bucket. Documented in docs/bucket-layout.md.

    dstack/code/{sha256}.tar.gz                       code archives (content-addressed)
    dstack/runs/{project}/{run}/run.json              run spec            (server writes)
    dstack/runs/{project}/{run}/jobs/{job}/spec.json  job spec            (server writes)
    .../jobs/{job}/stop.json                          stop request        (server writes)
    .../jobs/{job}/runner.json                        agent pid, job pgid (agent writes)
    .../jobs/{job}/status.json                        status, exit code   (agent writes)
    .../jobs/{job}/heartbeat.json                     last sign of life   (agent writes)
    .../jobs/{job}/logs/{seq:010d}.jsonl              log chunks, append-only (agent writes)
    .../jobs/{job}/artifacts/{path}                   artifacts           (agent writes)
"""

from __future__ import annotations

LAYOUT_VERSION = 1


def code_key(code_hash: str) -> str:
    return f"dstack/code/{code_hash}.tar.gz"


def run_prefix(project: str, run: str) -> str:
    return f"dstack/runs/{project}/{run}"


def job_prefix(project: str, run: str, job: str) -> str:
    return f"{run_prefix(project, run)}/jobs/{job}"


def log_chunk_key(prefix: str, seq: int) -> str:
    return f"{prefix}/logs/{seq:010d}.jsonl"


def artifact_key(prefix: str, path: str) -> str:
    return f"{prefix}/artifacts/{path}"
