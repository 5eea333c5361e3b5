from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from dstack.api.code import build_archive, list_files


def test_archive_honours_gitignore_and_dstackignore(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.log\nbuild/\n")
    (tmp_path / ".dstackignore").write_text("data/\n")
    (tmp_path / "train.py").write_text("print(1)")
    (tmp_path / "run.log").write_text("x")
    for d in ("build", "data", "src/sub", ".git", ".venv"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "build" / "a.o").write_text("x")
    (tmp_path / "data" / "big.bin").write_text("x")
    (tmp_path / ".git" / "HEAD").write_text("x")
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("x")
    (tmp_path / "src" / ".gitignore").write_text("secret.txt\n")
    (tmp_path / "src" / "secret.txt").write_text("x")
    (tmp_path / "src" / "sub" / "model.py").write_text("x")
    (tmp_path / "src" / "sub" / "debug.log").write_text("x")
    files = [p.as_posix() for p in list_files(tmp_path)]
    assert files == [".dstackignore", ".gitignore", "src/.gitignore", "src/sub/model.py", "train.py"]


def test_archive_is_reproducible(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("print('a')")
    first, digest = build_archive(tmp_path)
    later = (tmp_path / "a.py").stat().st_mtime + 60
    os.utime(tmp_path / "a.py", (later, later))  # a new mtime must not change the hash
    second, digest2 = build_archive(tmp_path)
    assert digest == digest2 and first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert tar.getnames() == ["a.py"]
