"""The code archive: the working directory, honouring .gitignore and .dstackignore."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pathspec

IGNORE_FILES = (".gitignore", ".dstackignore")
ALWAYS_IGNORED = {".git", ".venv", "__pycache__"}


def repo_id_for(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


def _load_spec(directory: Path) -> pathspec.PathSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        file = directory / name
        if file.is_file():
            lines.extend(file.read_text(errors="replace").splitlines())
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def list_files(root: Path) -> list[Path]:
    """Files to ship, relative to `root`, sorted; nested ignore files apply below their directory."""
    root = root.resolve()
    specs: list[tuple[Path, pathspec.PathSpec]] = []
    result: list[Path] = []

    def ignored(path: Path, is_dir: bool) -> bool:
        for base, spec in specs:
            if base == path or base in path.parents:
                rel = path.relative_to(base).as_posix() + ("/" if is_dir else "")
                if spec.match_file(rel):
                    return True
        return False

    for dirpath, dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        spec = _load_spec(current)
        if spec is not None:
            specs.append((current, spec))
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in ALWAYS_IGNORED and not ignored(current / d, True) and not (current / d).is_symlink()
        )
        for name in sorted(filenames):
            path = current / name
            if not ignored(path, False) and (path.is_file() or path.is_symlink()):
                result.append(path.relative_to(root))
    return sorted(result)


def build_archive(root: Path) -> tuple[bytes, str]:
    """A reproducible tar.gz of the directory and its sha256 (same content, same hash)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel in list_files(root):
            info = tar.gettarinfo(str(root / rel), arcname=rel.as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isfile():
                with open(root / rel, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    # gzip separately with mtime=0: the gzip header would otherwise carry the current time.
    data = gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)
    return data, hashlib.sha256(data).hexdigest()
