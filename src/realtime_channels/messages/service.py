"""Keeps the database side of private channels and database broadcast running (protocol.md §4.7):
migrations at start-up (retried while the database is away), daily partitions with retention,
and the feed of committed ``realtime.messages`` inserts into the node's streams."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any, Protocol

import psycopg

from ..cdc.sql import install_auth_helpers
from .dbbroadcast import DatabaseBroadcasts, DbMessage
from .migrations import ensure_partitions, migrate, purge_expired

log = logging.getLogger(__name__)

#: partitions are created ahead and old ones dropped this often
MAINTENANCE_SECONDS = 3600.0


class DatabasePublisher(Protocol):
    def publish_from_database(self, msg_id: str, sub_topic: str, event: str, private: bool,
                              data: bytes, binary: bool) -> None: ...


class MessagesService:
    def __init__(self, dsn: str, node: DatabasePublisher, *, publication: str, slot: str,
                 retention_days: int = 3, auth_helpers: bool = False) -> None:
        self.dsn = dsn
        self.node = node
        self.retention_days = retention_days
        self.auth_helpers = auth_helpers
        self.feed = DatabaseBroadcasts(dsn, publication=publication, slot=slot, on_message=self._on_message,
                                       prepare=self._prepare_db)
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="realtime-messages")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.feed.stop()

    def _on_message(self, m: DbMessage) -> None:
        self.node.publish_from_database(m.id, m.sub_topic, m.event, m.private, m.data, m.binary)

    async def _run(self) -> None:
        delay = 0.5
        while True:  # migrations first: the feed and the policies need realtime.messages
            try:
                await self._maintain(first=True)
                break
            except (psycopg.Error, OSError) as exc:
                log.error("realtime.messages migrations failed (%s); retrying in %.0f s", _first_line(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.ready.set()
        await self.feed.start()
        while True:
            await asyncio.sleep(MAINTENANCE_SECONDS)
            try:
                await self._maintain(first=False)
            except (psycopg.Error, OSError) as exc:
                log.warning("realtime.messages partition upkeep failed: %s", _first_line(exc))

    async def _prepare_db(self, conn: Any) -> None:
        """Before each session of the feed: a database that was reset meanwhile (its
        ``realtime`` schema gone) is migrated again; otherwise this finds nothing to do."""
        await migrate(conn, retention_days=self.retention_days, now=datetime.now(timezone.utc))
        if self.auth_helpers:
            await install_auth_helpers(conn)

    async def _maintain(self, *, first: bool) -> None:
        conn: Any = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        async with conn:
            now = datetime.now(timezone.utc)
            if first:
                await migrate(conn, retention_days=self.retention_days, now=now)
                if self.auth_helpers:
                    await install_auth_helpers(conn)
                log.info("realtime.messages schema is up to date")
            await ensure_partitions(conn, now, self.retention_days)
            purged = await purge_expired(conn)
            if purged:
                log.info("deleted %d persisted broadcasts past their ttl", purged)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
