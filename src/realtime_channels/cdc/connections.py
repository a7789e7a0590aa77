"""Side connections of the change feed: ordinary autocommit connections, one per job.

Subscription checks, routing (catalog look-ups and RLS) and function reporting each get their
own connection, so a burst of joins never holds up the delivery of changes (and the other way
round).  Each connection is opened on first use and re-opened when it broke; a statement runs
under the connection's own lock, since a psycopg connection runs one statement at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg

from . import sql

T = TypeVar("T")

#: postgres-cdc.md "Types": the text form of values depends on these session settings.
SESSION_OPTIONS = "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3"


class SideConnection:
    def __init__(self, dsn: str, *, on_open: Callable[[], None] | None = None) -> None:
        self._dsn = dsn
        self._on_open = on_open
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def use(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection, held exclusively for the block (opened or re-opened as needed)."""
        async with self._lock:
            yield await self._connect()

    async def run(self, job: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``job`` on the connection.  A connection opened earlier may have died unnoticed
        (PostgreSQL restarted meanwhile): when ``job`` fails on such a connection because it is
        broken, it runs once more on a fresh one, so the first use after a restart succeeds."""
        async with self._lock:
            reused = self._conn is not None and not self._conn.closed and not self._conn.broken
            conn = await self._connect()
            try:
                return await job(conn)
            except (psycopg.OperationalError, OSError):
                if not (reused and (conn.broken or conn.closed)):
                    raise
            return await job(await self._connect())

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, options=SESSION_OPTIONS)
        await sql.install(conn)
        self._conn = conn
        if self._on_open is not None:
            self._on_open()  # a new session may see a changed catalog: drop cached look-ups
        return conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
