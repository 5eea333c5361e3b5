"""The server's SQLite connections (`server/sqlite_driver.py`) on a real database file, through the
server's own engine: one trip to the connection's thread per statement, none for a commit or
rollback with nothing open, and transactions that still end as they must."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from dstack.server.db import Database
from dstack.server.settings import Settings


def _with_db(tmp_path: Path, body) -> None:  # noqa: ANN001
    async def main() -> None:
        db = Database(Settings(server_dir=tmp_path))
        try:
            async with db.engine.begin() as conn:
                await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            await body(db)
        finally:
            await db.close()

    asyncio.run(main())


async def _trips(db: Database, work) -> int:  # noqa: ANN001
    """How many calls `work(session)` sends to the connection's thread (aiosqlite's queue)."""
    async with db.session() as session:
        await session.execute(text("SELECT 1"))  # a connection checked out
        connection = (await (await session.connection()).get_raw_connection()).driver_connection
        queue = connection._tx  # the worker thread keeps reading this one

        class Counting:
            sent = 0

            def put_nowait(self, item: object) -> None:
                Counting.sent += 1
                queue.put_nowait(item)

        connection._tx = Counting()
        try:
            await work(session)
        finally:
            connection._tx = queue
        return Counting.sent


def test_one_trip_per_statement_and_none_for_an_empty_commit(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        async def read(session) -> None:  # noqa: ANN001
            rows = (await session.execute(text("SELECT id FROM t"))).all()
            assert rows == []
            await session.commit()  # nothing was written: no transaction to end

        assert await _trips(db, read) == 1

        async def write(session) -> None:  # noqa: ANN001
            await session.execute(text("INSERT INTO t (v) VALUES ('a')"))
            await session.commit()

        assert await _trips(db, write) == 2  # the insert, the commit

    _with_db(tmp_path, body)


def test_transactions_still_commit_and_roll_back(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        async with db.session() as session:
            await session.execute(text("INSERT INTO t (v) VALUES ('kept')"))
            await session.commit()
        async with db.session() as session:  # closed without a commit: the pool rolls it back
            await session.execute(text("INSERT INTO t (v) VALUES ('dropped')"))
        async with db.session() as session:
            await session.execute(text("INSERT INTO t (v) VALUES ('undone')"))
            await session.rollback()
        # No write lock left behind: two sessions write one after the other.
        for value in ("x", "y"):
            async with db.session() as session:
                await session.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
                await session.commit()
        async with db.session() as session:
            values = (await session.scalars(text("SELECT v FROM t ORDER BY id"))).all()
            many = (await session.execute(text("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                                               "FROM n WHERE i < 5000) SELECT i FROM n"))).all()
        assert values == ["kept", "x", "y"]
        assert [r[0] for r in many] == list(range(1, 5001))

    _with_db(tmp_path, body)
