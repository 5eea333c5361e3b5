from __future__ import annotations

from pathlib import Path

import pytest

from dstack.storage import storage_from_url
from dstack.storage.local import DirectoryStorage


def test_put_get_list_delete(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path / "bucket")
    assert storage.get("a/b.txt") is None
    for i in range(5):
        storage.put(f"logs/{i:03d}.jsonl", f"chunk {i}".encode())
    storage.put("other/x", b"x")
    assert storage.list("logs/") == [f"logs/{i:03d}.jsonl" for i in range(5)]
    assert storage.list("logs/", start_after="logs/001.jsonl", limit=2) == ["logs/002.jsonl", "logs/003.jsonl"]
    assert storage.get("logs/004.jsonl") == b"chunk 4"
    assert storage.size("logs/004.jsonl") == 7
    storage.delete("logs/004.jsonl")
    assert not storage.exists("logs/004.jsonl")
    storage.put_json("j.json", {"a": 1})
    assert storage.get_json("j.json") == {"a": 1}


def test_writes_leave_no_temporary_files_and_replace_whole_objects(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path)
    storage.put("k", b"old")
    storage.put("k", b"new")
    assert storage.get("k") == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_keys_cannot_escape_the_bucket(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path / "bucket")
    with pytest.raises(ValueError, match="escapes the bucket"):
        storage.put("../outside", b"x")
    for key in ("/etc/passwd", "a/../../outside", ".."):
        with pytest.raises(ValueError, match="escapes the bucket"):
            storage.get(key)
    with pytest.raises(ValueError, match="escapes the bucket"):  # a sibling whose name starts like the bucket's
        storage.put("../bucket-other/x", b"x")
    assert not (tmp_path / "bucket-other").exists()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="escapes the bucket"):
        storage.put("link/x", b"x")
    with pytest.raises(ValueError, match="escapes the bucket"):
        storage.get("link/x")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    storage.put("a/../b", b"inside")  # `..` that stays inside is the key it names
    assert storage.get("b") == b"inside"
    (tmp_path / "bucket" / "inner").symlink_to(tmp_path / "bucket" / "a")  # a link that stays inside
    storage.put("inner/c", b"through the link")
    assert (tmp_path / "bucket" / "a" / "c").read_bytes() == b"through the link"


def test_storage_from_url(tmp_path: Path) -> None:
    assert isinstance(storage_from_url(tmp_path.as_uri()), DirectoryStorage)
    with pytest.raises(ValueError, match="unsupported storage URL"):
        storage_from_url("ftp://x")
