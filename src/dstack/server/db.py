"""Database engine and sessions (SQLite in WAL mode by default, PostgreSQL for replicas)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from dstack.server.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        (settings.server_dir / "data").mkdir(parents=True, exist_ok=True)
        from sqlalchemy.engine import make_url

        from dstack.server import sqlite_driver

        path = make_url(settings.db_url).database or ":memory:"
        engine = create_async_engine(settings.db_url,
                                     async_creator=lambda: sqlite_driver.connect(path, timeout=30))

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # 512 KiB of page cache per connection, not 2 MiB: the pool keeps up to 15, and in WAL mode a
            # connection's cache is dropped whenever another one commits (the workers commit all the
            # time), so a big one holds memory more than it saves reads (list runs: same req/s here).
            cursor.execute("PRAGMA cache_size=-512")
            cursor.close()

        return engine
    return create_async_engine(settings.db_url, pool_size=10, max_overflow=10, pool_pre_ping=True)


class Database:
    def __init__(self, settings: Settings) -> None:
        self.engine = create_engine(settings)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            yield session

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection in a transaction, committed on exit (rolled back on an error): for plain
        statements that need no ORM session, at about half a session's cost."""
        return self.engine.begin()

    async def close(self) -> None:
        await self.engine.dispose()
