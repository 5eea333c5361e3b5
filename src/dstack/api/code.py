"""The code archive: the working directory, honouring .gitignore and .dstackignore."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pathspec

from dstack.core.errors import ConfigurationError

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


def code_root(conf: Any, *, config_dir: Path, repo_dir: Path) -> Path | None:
    """What the code archive holds: the local repo `repos` names (relative to the configuration's
    directory), nothing for a repo URL (the instance clones it), else the directory `dstack apply`
    runs in."""
    if not conf.repos:
        return repo_dir
    repo = conf.repos[0]
    if repo.url is not None:
        return None
    root = (config_dir / os.path.expanduser(repo.local_path)).resolve()
    if not root.is_dir():
        raise ConfigurationError(f"repos[0]: {repo.local_path} ({root}) is not a directory", field="repos",
                                 fix="Give a local git repo's directory, relative to the configuration file")
    return root


def build_files_archive(files: list[Any], *, config_dir: Path) -> tuple[bytes, str]:
    """Every `files` entry under its index (`0`, `1`/…): a file, or a directory honouring its
    .gitignore and .dstackignore. Local paths are relative to the configuration's directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for index, mapping in enumerate(files):
            local = (config_dir / os.path.expanduser(mapping.local_path)).resolve()
            if not local.exists():
                raise ConfigurationError(f"files[{index}]: {mapping.local_path} ({local}) does not exist",
                                         field=f"files.{index}", fix="Fix the local path, or remove the entry")
            entries = [(local, str(index))] if local.is_file() else \
                [(local, str(index))] + [(local / rel, f"{index}/{rel.as_posix()}") for rel in list_files(local)]
            for path, arcname in entries:
                info = tar.gettarinfo(str(path), arcname=arcname)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    data = gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)
    return data, hashlib.sha256(data).hexdigest()
