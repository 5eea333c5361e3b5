"""How a cloud instance starts the agent: the agent package and the user data that runs it.

The server publishes its own agent code as a zipapp to the bucket (content-addressed), so the
instance runs exactly the agent of the server that launched it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import shlex
import zipfile
from pathlib import Path

import dstack

_PACKAGE_ROOT = Path(dstack.__file__).parent
# The agent needs only these (stdlib + psutil + boto3 on the instance; no pydantic).
_AGENT_MODULES = ["__init__.py", "agent", "storage"]
_MAIN = "import sys\nfrom dstack.agent.runner import main\nsys.exit(main())\n"


@functools.cache
def agent_package() -> tuple[bytes, str]:
    """(zipapp bytes, sha256). Deterministic: same code, same hash."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        files = []
        for name in _AGENT_MODULES:
            path = _PACKAGE_ROOT / name
            files += [path] if path.is_file() else sorted(path.rglob("*.py"))
        for path in files:
            info = zipfile.ZipInfo(f"dstack/{path.relative_to(_PACKAGE_ROOT).as_posix()}", (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
        main = zipfile.ZipInfo("__main__.py", (1980, 1, 1, 0, 0, 0))
        zf.writestr(main, _MAIN)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def agent_package_key(digest: str) -> str:
    return f"dstack/agent/{digest}.pyz"


def user_data(*, storage_url: str, bucket: str, region: str, job_prefix: str, job_id: str,
              package_digest: str) -> str:
    """A cloud-init shell script: fetch the agent through the instance's role, start it, detach."""
    q = shlex.quote
    agent = f"/opt/dstack/agent-{package_digest[:16]}.pyz"
    # The network may not be up the moment cloud-init runs: retry for a minute.
    fetch = ("import boto3, sys, time\nfor i in range(30):\n    try:\n        boto3.client('s3', region_name="
             "sys.argv[1]).download_file(sys.argv[2], sys.argv[3], sys.argv[4]); break\n    except Exception:\n"
             "        if i == 29: raise\n        time.sleep(2)")
    return f"""#!/bin/bash
# dstack: start the agent of job {job_id}
set -eu
export AWS_DEFAULT_REGION={q(region)}
mkdir -p /opt/dstack/jobs
PY=$(command -v python3)
"$PY" -c 'import boto3, psutil' 2>/dev/null || "$PY" -m pip install -q boto3 psutil
[ -s {q(agent)} ] || "$PY" -c {q(fetch)} {q(region)} {q(bucket)} {q(agent_package_key(package_digest))} {q(agent)}
setsid nohup "$PY" {q(agent)} --storage {q(storage_url)} --job {q(job_prefix)} \\
  --workdir /opt/dstack/jobs/{q(job_id)} >> /opt/dstack/agent-{q(job_id)}.log 2>&1 < /dev/null &
"""
