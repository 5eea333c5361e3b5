"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import need
from tests.registry import Registry, can_run_containers
from tests.ui.conftest import browser, page  # noqa: F401 - real Chromium for the e2e tests that check a page


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    ok, why = can_run_containers()
    need(ok, why)
    reg = Registry(tmp_path / "registry").start()
    yield reg
    reg.stop()
