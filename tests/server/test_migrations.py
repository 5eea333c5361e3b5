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


def test_a_current_schema_is_recognised_without_alembic(tmp_path: Path) -> None:
    """The start-up shortcut (no Alembic import when the schema is current) knows the newest revision,
    and an older schema is still upgraded."""
    from alembic.script import ScriptDirectory

    from dstack.server.migrate import HEAD_REVISION, current_revision, upgrade

    settings = Settings(server_dir=tmp_path)
    config = alembic_config(settings)
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION
    assert current_revision(settings) is None
    upgrade(settings)
    assert current_revision(settings) == HEAD_REVISION
    command.downgrade(config, "0008")
    assert current_revision(settings) == "0008"
    upgrade(settings)
    assert current_revision(settings) == HEAD_REVISION
    sync_url = settings.db_url.replace("+aiosqlite", "")
    assert _diff(sync_url) == []
