"""One reader per slot in a cluster: leader election by a PostgreSQL advisory lock.

Only used when nodes share the change feed (a cluster PubSub); a single node reads the slot
itself.  The holder of ``pg_try_advisory_lock(hashtext('realtime_channels:<slot>'))`` reads the
replication stream and shares every transaction; the others retry the lock every
``LOCK_RETRY_S``.  When the leader dies its session ends, the lock is released and another node
takes over from the stored position.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import psycopg

log = logging.getLogger(__name__)

LOCK_RETRY_S = 2.0


class Leadership:
    """``read`` runs the replication reader until it ends and ``stop`` stops it gracefully;
    ``beat`` is called every ``LOCK_RETRY_S`` while this node leads (followers learn the
    stream's state from it)."""

    def __init__(self, dsn: str, slot: str, *, read: Callable[[], Coroutine[Any, Any, None]],
                 stop: Callable[[], Awaitable[None]], beat: Callable[[], None]) -> None:
        self._dsn = dsn
        self._key = f"realtime_channels:{slot}"
        self._slot = slot
        self._read = read
        self._stop = stop
        self._beat = beat
        self.leading = False

    async def run(self) -> None:
        """Contend for the lock forever (cancel to stop)."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            except (psycopg.Error, OSError) as exc:
                log.warning("postgres_changes: cannot connect to PostgreSQL: %s", exc)
                await asyncio.sleep(LOCK_RETRY_S)
                continue
            try:
                async with conn:
                    cur = await conn.execute("select pg_try_advisory_lock(hashtext(%s))", [self._key])
                    row = await cur.fetchone()
                    if not row or not row[0]:  # another node reads; we route what it shares
                        await asyncio.sleep(LOCK_RETRY_S)
                        continue
                    await self._hold(conn)
            except (psycopg.Error, OSError) as exc:
                log.warning("postgres_changes: lost the reader lock: %s", exc)
            finally:
                self.leading = False

    async def _hold(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.leading = True
        log.info("postgres_changes: this node reads the replication stream (slot %s)", self._slot)
        reader = asyncio.create_task(self._read(), name="replication-reader")
        try:
            while not reader.done():
                await asyncio.sleep(LOCK_RETRY_S)
                await conn.execute("select 1")  # the lock lives as long as this session
                self._beat()
        finally:
            await self._stop()
            reader.cancel()
