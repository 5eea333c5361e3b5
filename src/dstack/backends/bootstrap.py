"""How a cloud instance starts the agent: the agent package and the user data that runs it.

The server publishes its own agent code as a zipapp to the bucket (content-addressed), so the
instance runs exactly the agent of the server that launched it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import shlex
import zipfile
import zlib
from pathlib import Path

import dstack
from dstack.agent.ssh import jump_key_line

_PACKAGE_ROOT = Path(dstack.__file__).parent
# The agent needs only these, and nothing but the standard library (no pydantic, boto3 or psutil).
_AGENT_MODULES = ["__init__.py", "agent", "storage"]
_MAIN = "import sys\nfrom dstack.agent.main import main\nsys.exit(main())\n"


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


# A cloud job without `image` runs in this one, for the job's `python` (or DSTACK_DEFAULT_PYTHON):
# Debian with that CPython and pip. pip-installed PyTorch brings its own CUDA libraries, and the
# NVIDIA container runtime adds the driver, so it runs as is on CPU and GPU instances.
DEFAULT_IMAGE = "python:{python}-slim"
DEFAULT_PYTHON = "3.12"


def default_image(python: str | None) -> str:
    """The image of a cloud job that names none (settings DSTACK_DEFAULT_IMAGE, a template with
    `{python}`, and DSTACK_DEFAULT_PYTHON)."""
    template = os.environ.get("DSTACK_DEFAULT_IMAGE") or DEFAULT_IMAGE
    return template.replace("{python}", python or os.environ.get("DSTACK_DEFAULT_PYTHON") or DEFAULT_PYTHON)


# `docker: true`: the job runs in this image, privileged, with its own Docker daemon started first.
DIND_IMAGE = "docker:dind"
DIND_START = ("(dockerd-entrypoint.sh dockerd >/var/log/dockerd.log 2>&1 &) && "
              "i=0; until docker info >/dev/null 2>&1; do i=$((i+1)); "
              "if [ $i -gt 120 ]; then echo 'dstack: the Docker daemon did not start:' >&2; "
              "tail -5 /var/log/dockerd.log >&2; exit 1; fi; sleep 0.5; done")


def dind_image() -> str:
    """The Docker-in-Docker image (setting DSTACK_DIND_IMAGE): it must have `dockerd-entrypoint.sh`."""
    return os.environ.get("DSTACK_DIND_IMAGE") or DIND_IMAGE


def agent_package_key(digest: str) -> str:
    return f"dstack/agent/{digest}.pyz"


@functools.cache
def _fetch_script() -> str:
    """Python for the user data: fetch one S3 object with the instance role, through the agent's own
    standard-library SigV4 client (embedded compressed: the user data must stay under 16 KB)."""
    source = (_PACKAGE_ROOT / "storage" / "sigv4.py").read_bytes()
    packed = base64.b64encode(zlib.compress(source, 9)).decode()
    return (
        "import base64, os, sys, types, zlib\n"
        f"m = types.ModuleType('sigv4'); exec(zlib.decompress(base64.b64decode('{packed}')), m.__dict__)\n"
        "region, bucket, key, dest = sys.argv[1:5]\n"
        "url = m.s3_bucket_url(bucket, region) + '/' + m.urllib.parse.quote(key)\n"
        "data = m.AWSClient('s3', region).request('GET', url)[2]\n"
        "open(dest + '.tmp', 'wb').write(data); os.replace(dest + '.tmp', dest)\n"
    )


def authorize_jump_keys(*, keys: list[str], users: list[str], port: int) -> str:
    """Bash for the user data: the run's user's keys, as jump-only keys (`jump_key_line`), for the
    first of `users` the image has (its default user); that user's name is exported for the agent,
    which publishes it with the host keys."""
    q = shlex.quote
    lines = "\n".join(jump_key_line(k, port) for k in keys)
    find = f"""SSH_USER=""
for u in {" ".join(q(u) for u in users)}; do
  if getent passwd "$u" >/dev/null 2>&1; then SSH_USER=$u; break; fi
done
"""
    if not keys:
        return find + 'export DSTACK_INSTANCE_SSH_USER="$SSH_USER"\n'
    return find + f"""if [ -n "$SSH_USER" ]; then
  HOME_DIR=$(getent passwd "$SSH_USER" | cut -d: -f6)
  mkdir -p "$HOME_DIR/.ssh" && printf '%s\\n' {q(lines)} >> "$HOME_DIR/.ssh/authorized_keys"
  chown -R "$SSH_USER" "$HOME_DIR/.ssh" 2>/dev/null || true
  chmod 700 "$HOME_DIR/.ssh" && chmod 600 "$HOME_DIR/.ssh/authorized_keys"
fi
export DSTACK_INSTANCE_SSH_USER="$SSH_USER"
"""


# The default users of the images the AWS backend may boot (ECS-optimized Amazon Linux first).
AWS_IMAGE_USERS = ["ec2-user", "ubuntu", "admin"]


def user_data(*, storage_url: str, bucket: str, region: str, job_prefix: str, job_id: str,
              package_digest: str, ssh_public_keys: list[str] = (), ssh_port: int = 10022,
              fleet_instance: bool = False) -> str:
    """A cloud-init shell script for a stock image (python3 >= 3.9, nothing installed): fetch the agent
    with the instance role, start it, detach. No pip, no SDK, nothing from the internet but the bucket.
    For a fleet instance, `job_prefix` is the instance's prefix: the agent waits there for jobs."""
    q = shlex.quote
    agent = f"/opt/dstack/agent-{package_digest[:16]}.pyz"
    mode = "--instance" if fleet_instance else "--job"
    fetch = _fetch_script()
    return f"""#!/bin/bash
# dstack: start the agent of {"fleet instance" if fleet_instance else "job"} {job_id}
set -eu
export HOME="${{HOME:-/root}}"  # cloud-init runs user data without one
export AWS_DEFAULT_REGION={q(region)}
mkdir -p /opt/dstack/jobs
{authorize_jump_keys(keys=list(ssh_public_keys), users=AWS_IMAGE_USERS, port=ssh_port)}PY=$(command -v python3)
[ -s {q(agent)} ] || "$PY" -c {q(fetch)} {q(region)} {q(bucket)} {q(agent_package_key(package_digest))} {q(agent)}
setsid nohup "$PY" {q(agent)} --storage {q(storage_url)} {mode} {q(job_prefix)} \\
  --workdir /opt/dstack/jobs/{q(job_id)} >> /opt/dstack/agent-{q(job_id)}.log 2>&1 < /dev/null &
"""
