"""Cloud-init user data for a Lambda instance: the agent's presigned access, the user's SSH key,
the agent package (fetched through a presigned URL), and the agent itself."""

from __future__ import annotations

import json
import shlex
from typing import Any


def user_data(*, job_id: str, job_prefix: str, access: dict[str, Any], agent_url: str, package_digest: str,
              secrets: dict[str, str], ssh_user: str, ssh_public_keys: list[str]) -> str:
    q = shlex.quote
    job_dir = f"/opt/dstack/jobs/{job_id}"
    agent = f"/opt/dstack/agent-{package_digest[:16]}.pyz"
    # The network may not be up the moment cloud-init runs: retry for a minute.
    fetch = ("import sys, time, urllib.request\nfor i in range(30):\n    try:\n        "
             "urllib.request.urlretrieve(sys.argv[1], sys.argv[2]); break\n    except OSError:\n"
             "        if i == 29: raise\n        time.sleep(2)")
    keys = "\n".join(ssh_public_keys)
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
HOME_DIR=$(getent passwd {q(ssh_user)} | cut -d: -f6 || true)
if [ -n "$HOME_DIR" ] && [ -n {q(keys)} ]; then
  mkdir -p "$HOME_DIR/.ssh" && printf '%s\\n' {q(keys)} >> "$HOME_DIR/.ssh/authorized_keys"
  chown -R {q(ssh_user)} "$HOME_DIR/.ssh" 2>/dev/null || true
  chmod 700 "$HOME_DIR/.ssh" && chmod 600 "$HOME_DIR/.ssh/authorized_keys"
fi
PY=$(command -v python3)
[ -s {q(agent)} ] || "$PY" -c {q(fetch)} {q(agent_url)} {q(agent)}
DSTACK_AGENT_SECRETS_FILE={q(job_dir)}/secrets.json setsid nohup "$PY" {q(agent)} \\
  --storage {q("presigned://" + job_dir + "/access.json")} --job {q(job_prefix)} \\
  --workdir {q(job_dir)}/work >> /opt/dstack/agent-{q(job_id)}.log 2>&1 < /dev/null &
"""
