"""Create or upgrade the schema with Alembic (called at server start). A schema already at the
newest revision is recognised with one query, without importing Alembic (and Mako, and Pygments):
a warm start does not pay for them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from dstack.server.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration's revision (tests/server/test_migrations.py checks it against Alembic's head).
HEAD_REVISION = "0010"


def alembic_config(settings: Settings) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", settings.db_url.replace("%", "%%"))
    return cfg


def current_revision(settings: Settings) -> str | None:
    """The schema's revision, or None where there is no schema yet (or it cannot be read)."""
    if settings.is_sqlite:
        import sqlite3

        path = Path(settings.db_url.split("///", 1)[1])
        if not path.exists():
            return None
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    async def _read() -> str | None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(settings.db_url)
        try:
            async with engine.connect() as connection:
                return (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        except Exception:  # no table yet: Alembic creates it (and reports a DB it cannot reach)
            return None
        finally:
            await engine.dispose()

    return asyncio.run(_read())


def upgrade(settings: Settings) -> None:
    if settings.is_sqlite:
        (settings.server_dir / "data").mkdir(parents=True, exist_ok=True)
    if current_revision(settings) == HEAD_REVISION:
        return
    from alembic import command

    command.upgrade(alembic_config(settings), "head")
