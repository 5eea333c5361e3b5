"""The migrations build exactly the schema the ORM models describe (a model change without its
migration fails here, not on a user's upgrade), and downgrade cleanly."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from dstack.server.migrate import alembic_config
from dstack.server.models import Base
from dstack.server.settings import Settings


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": False})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_migrations_match_the_models_and_downgrade(tmp_path: Path) -> None:
    settings = Settings(server_dir=tmp_path)
    (tmp_path / "data").mkdir()
    config = alembic_config(settings)
    command.upgrade(config, "head")
    sync_url = settings.db_url.replace("+aiosqlite", "")
    assert _diff(sync_url) == []
    command.downgrade(config, "0006")
    command.upgrade(config, "head")
    assert _diff(sync_url) == []
