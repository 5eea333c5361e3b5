"""Cloud-init user data for a Lambda instance: the agent's presigned access, the user's SSH key
(allowed to reach the job's sshd only: see bootstrap.authorize_jump_keys),
the agent package (fetched through a presigned URL), and the agent itself."""

from __future__ import annotations

import json
import shlex
from typing import Any

from dstack.backends.base import JOB_SSH_PORT
from dstack.backends.bootstrap import authorize_jump_keys


def user_data(*, job_id: str, job_prefix: str, access: dict[str, Any], agent_url: str, package_digest: str,
              secrets: dict[str, str], ssh_user: str, ssh_public_keys: list[str], ssh_port: int = JOB_SSH_PORT) -> str:
    q = shlex.quote
    job_dir = f"/opt/dstack/jobs/{job_id}"
    agent = f"/opt/dstack/agent-{package_digest[:16]}.pyz"
    # The network may not be up the moment cloud-init runs: retry for a minute.
    fetch = ("import sys, time, urllib.request\nfor i in range(30):\n    try:\n        "
             "urllib.request.urlretrieve(sys.argv[1], sys.argv[2]); break\n    except OSError:\n"
             "        if i == 29: raise\n        time.sleep(2)")
    return f"""#!/bin/bash
# dstack: start the agent of job {job_id}. No cloud keys: only presigned access to this job's prefix.
set -eu
export HOME="${{HOME:-/root}}"  # cloud-init runs user data without one
umask 077
mkdir -p {q(job_dir)}
cat > {q(job_dir)}/access.json <<'DSTACK_ACCESS'
{json.dumps(access)}
DSTACK_ACCESS
cat > {q(job_dir)}/secrets.json <<'DSTACK_SECRETS'
{json.dumps(secrets)}
DSTACK_SECRETS
umask 022
{authorize_jump_keys(keys=list(ssh_public_keys), users=[ssh_user], port=ssh_port)}PY=$(command -v python3)
[ -s {q(agent)} ] || "$PY" -c {q(fetch)} {q(agent_url)} {q(agent)}
DSTACK_AGENT_SECRETS_FILE={q(job_dir)}/secrets.json setsid nohup "$PY" {q(agent)} \\
  --storage {q("presigned://" + job_dir + "/access.json")} --job {q(job_prefix)} \\
  --workdir {q(job_dir)}/work >> /opt/dstack/agent-{q(job_id)}.log 2>&1 < /dev/null &
"""
