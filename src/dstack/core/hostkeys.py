"""Pinned SSH host keys: what an instance's agent published through the bucket, as a known_hosts file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def write_known_hosts(path: Path, host: str, port: int, keys: list[str]) -> Path:
    """A known_hosts file that trusts exactly `keys` for host:port (ssh then runs with
    StrictHostKeyChecking=yes: a changed key is refused)."""
    return write_known_hosts_entries(path, [(known_hosts_name(host, port), keys)])


def write_known_hosts_entries(path: Path, entries: list[tuple[str, list[str]]]) -> Path:
    """A known_hosts file of (name, keys) entries: names as ssh matches them (a HostKeyAlias, or
    `host` / `[host]:port`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".known_hosts")
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{name} {key}\n" for name, keys in entries for key in keys))
    os.replace(tmp, path)
    return path


def pinned_ssh_options(known_hosts: Path) -> list[str]:
    return ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "CheckHostIP=no"]
