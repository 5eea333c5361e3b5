"""The local jobs directory: traversable by the job's unprivileged user however the server's umask
is set, and not listable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dstack.backends.local.compute import traversable_dirs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_parents_are_traversable_under_a_private_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)  # as the server runs
    try:
        base = tmp_path / "var-lib"
        base.mkdir()
        os.chmod(base, 0o755)
        jobs = base / "dstack" / "jobs"
        traversable_dirs(jobs)
        assert _mode(base / "dstack") == 0o755 and _mode(jobs) == 0o711
        # A dstack directory an older server left private gets its x bits back; others are left alone.
        os.chmod(base / "dstack", 0o700)
        private = tmp_path / "home-like"
        private.mkdir(mode=0o700)
        traversable_dirs(jobs)
        traversable_dirs(private / "jobs")
        assert _mode(base / "dstack") == 0o711 and _mode(private) == 0o700
    finally:
        os.umask(old)
