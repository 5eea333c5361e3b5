"""Fixtures of the server's own tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.server import migrate
from dstack.server.context import ServerContext
from dstack.server.db import Database
from dstack.server.settings import Settings


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    """A server's context on a real database (SQLite, migrated as the server does), no server
    process: for the workers' passes, called directly."""
    settings = Settings(server_dir=tmp_path)
    migrate.upgrade(settings)
    yield ServerContext(settings=settings, db=Database(settings))
