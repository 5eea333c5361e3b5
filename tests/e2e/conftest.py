"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import need
from tests.registry import Registry, can_run_containers


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    ok, why = can_run_containers()
    need(ok, why)
    reg = Registry(tmp_path / "registry").start()
    yield reg
    reg.stop()
