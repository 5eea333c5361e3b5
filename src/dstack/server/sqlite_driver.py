"""aiosqlite connections whose queries take one trip to the connection's thread instead of four.

aiosqlite runs every call of a sqlite3 connection on its own thread, and SQLAlchemy's adapter makes
four such calls per statement (open a cursor, execute, fetch all, close); each trip hands over to the
thread and back through the event loop, about 0.15 ms here, more than most of our statements cost.
Here `execute` opens the cursor, runs the statement, fetches its rows and closes the cursor in one
call on that thread, and the cursor answers from what it brought back; a commit or rollback with no
transaction open makes no trip at all. The rows are fetched at once,
as SQLAlchemy's adapter does for every cursor that is not server-side (we use none)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiosqlite
from aiosqlite.context import contextmanager


class OneTripCursor:
    """What SQLAlchemy's aiosqlite adapter asks of a cursor, each statement in one trip."""

    def __init__(self, conn: OneTripConnection) -> None:
        self._conn = conn
        self._rows: list[Any] = []
        self.description: Sequence[Any] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    async def _run(self, call: Callable[[sqlite3.Cursor], Any]) -> OneTripCursor:
        def trip(connection: sqlite3.Connection) -> tuple[list[Any], Any, int, int | None]:
            cursor = connection.cursor()
            try:
                call(cursor)
                rows = cursor.fetchall() if cursor.description else []
                return rows, cursor.description, cursor.rowcount, cursor.lastrowid
            finally:
                cursor.close()

        self._rows, self.description, self.rowcount, self.lastrowid = await self._conn._execute(trip, self._conn._conn)
        return self

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> OneTripCursor:
        return await self._run(lambda cursor: cursor.execute(sql, parameters if parameters is not None else ()))

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> OneTripCursor:
        return await self._run(lambda cursor: cursor.executemany(sql, parameters))

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = size or self.arraysize
        taken, self._rows = self._rows[:size], self._rows[size:]
        return taken

    async def fetchall(self) -> list[Any]:
        taken, self._rows = self._rows, []
        return taken

    async def close(self) -> None:
        self._rows = []

    async def __aenter__(self) -> OneTripCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class OneTripConnection(aiosqlite.Connection):
    @contextmanager
    async def cursor(self) -> OneTripCursor:  # type: ignore[override]
        return OneTripCursor(self)

    # With no transaction open there is nothing to commit or roll back: no trip. (The pool rolls back
    # every connection it gets back, mostly after a commit; a session that only read never began one.)
    # `in_transaction` may be read from this thread, and no call is in flight on this connection
    # while SQLAlchemy asks for one of these.
    async def commit(self) -> None:
        if self._connection is not None and not self._connection.in_transaction:
            return
        await super().commit()

    async def rollback(self) -> None:
        if self._connection is not None and not self._connection.in_transaction:
            return
        await super().rollback()


def connect(path: str, **kwargs: Any) -> OneTripConnection:
    """Like `aiosqlite.connect`, for SQLAlchemy's `async_creator` (which awaits it)."""
    connection = OneTripConnection(lambda: sqlite3.connect(path, **kwargs), 64)
    connection._thread.daemon = True  # as SQLAlchemy does with its own aiosqlite connections
    return connection
