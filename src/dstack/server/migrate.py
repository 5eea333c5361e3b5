"""Create or upgrade the schema with Alembic (called at server start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from dstack.server.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", settings.db_url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings) -> None:
    if settings.is_sqlite:
        (settings.server_dir / "data").mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), "head")
