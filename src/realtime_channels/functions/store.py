"""Deliveries and their durable home, ``realtime.rc_function_events``.

A row per delivery (one event for one trigger).  ``state`` is ``queued`` while the engine owns
it, ``dead`` once it is dead-lettered, and ``replay`` when ``realtime-channels functions dlq
replay`` handed it back from another process: the running engine adopts ``replay`` rows on its
next poll (and at start-up) and turns them back into ``queued``.  A delivered row is deleted.

**Ownership**: each engine has an ``owner`` id and holds a session advisory lock on it for as
long as it runs.  Rows whose owner no longer holds its lock (a stopped or crashed server, or a
previous run of this one) are adopted by a live engine at start-up and on every poll, so with
several servers (``--workers``) on one database no row is delivered by two live engines, and
none is stranded when one of them dies.

``seq`` is the insertion order; deliveries are reloaded in ``seq`` order so per-topic order
survives a restart.  ``id`` is the idempotency key the function sees (``webhook-id``), kept
across attempts, restarts and replays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from ..cdc.sql import INSTALL_LOCK
from .targets import dumps

__all__ = ["Delivery", "PgStore", "TABLE"]

log = logging.getLogger(__name__)

TABLE = "realtime.rc_function_events"
#: First key of the ownership advisory locks ("rcfn"); the second is hashtext(owner).
_OWNER_LOCK = 0x7263666E
T = TypeVar("T")

_SETUP = (
    "create schema if not exists realtime",
    f"""
    create table if not exists {TABLE} (
        id uuid primary key,
        trigger text not null,
        topic text not null,
        seq bigint generated always as identity,
        event jsonb not null,
        attempts integer not null default 0,
        next_at timestamptz not null default now(),
        state text not null default 'queued' check (state in ('queued', 'replay', 'dead')),
        last_error text,
        owner text,
        inserted_at timestamptz not null default now(),
        updated_at timestamptz not null default now()
    )
    """,
    f"alter table {TABLE} add column if not exists owner text",
    f"create index if not exists rc_function_events_state_seq_idx on {TABLE} (state, seq)",
)
_COLUMNS = ("id::text as id_text, trigger, topic, event, attempts,"
            " extract(epoch from next_at)::float8 as next_epoch, last_error")


@dataclass(slots=True, eq=False)
class Delivery:
    """One event on its way to one trigger's target; mutable attempt bookkeeping."""

    id: str
    trigger: str
    topic: str
    event: dict[str, Any]
    attempts: int = 0
    next_at: float = 0.0  # wall-clock seconds: it is persisted, so not monotonic
    last_error: str | None = None
    #: monotonic time it entered this process's queue (end-to-end latency)
    queued_at: float = field(default=0.0, compare=False)

    def describe(self) -> dict[str, Any]:
        """The dead-letter view (``dlq_list`` and the CLI)."""
        return {"id": self.id, "trigger": self.trigger, "topic": self.topic, "attempts": self.attempts,
                "last_error": self.last_error, "event": self.event}


def _row(r: Sequence[Any]) -> Delivery:
    event = r[3] if isinstance(r[3], dict) else orjson.loads(r[3])
    return Delivery(id=r[0], trigger=r[1], topic=r[2], event=event, attempts=int(r[4]),
                    next_at=float(r[5]), last_error=r[6])


class PgStore:
    """One autocommit connection, serialised by a lock and reopened after a failure."""

    def __init__(self, dsn: str, owner: str | None = None) -> None:
        self.dsn = dsn
        self.owner = owner
        self._conn: AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        #: holds the owner's advisory lock for the life of the engine
        self._owner_conn: AsyncConnection[Any] | None = None

    async def _run(self, op: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await AsyncConnection.connect(self.dsn, autocommit=True)
            try:
                return await op(self._conn)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                conn, self._conn = self._conn, None
                await conn.close()
                raise

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            if self._owner_conn is not None:
                await self._owner_conn.close()  # releases the ownership lock
                self._owner_conn = None

    async def hold_ownership(self) -> None:
        """Take (or re-take, after a lost connection) the advisory lock that marks us alive."""
        assert self.owner is not None
        if self._owner_conn is not None and not self._owner_conn.closed:
            try:
                await self._owner_conn.execute("select 1")
                return
            except (psycopg.OperationalError, psycopg.InterfaceError):
                await self._owner_conn.close()
        self._owner_conn = await AsyncConnection.connect(self.dsn, autocommit=True)
        await self._owner_conn.execute("select pg_advisory_lock(%s, hashtext(%s))", (_OWNER_LOCK, self.owner))

    async def table_exists(self) -> bool:
        async def op(conn: AsyncConnection[Any]) -> bool:
            cur = await conn.execute("select to_regclass(%s) is not null", (TABLE,))
            row = await cur.fetchone()
            return bool(row and row[0])

        return await self._run(op)

    async def setup(self) -> None:
        async def op(conn: AsyncConnection[Any]) -> None:
            async with conn.transaction():
                # CREATE … IF NOT EXISTS races with any concurrent creator of schema realtime
                # (another server, the replication reader, the migrations): all take this lock.
                await conn.execute("select pg_catalog.pg_advisory_xact_lock(%s)", (INSTALL_LOCK,))
                for stmt in _SETUP:
                    await conn.execute(stmt)

        await self._run(op)

    async def insert(self, batch: Sequence[Delivery], state: str = "queued") -> None:
        async def op(conn: AsyncConnection[Any]) -> None:
            async with conn.cursor() as cur:
                await cur.executemany(
                    f"insert into {TABLE} (id, trigger, topic, event, attempts, next_at, last_error, state, owner)"
                    " values (%s, %s, %s, %s, %s, to_timestamp(%s), %s, %s, %s) on conflict (id) do nothing",
                    [(d.id, d.trigger, d.topic, Jsonb(d.event, dumps=_dumps), d.attempts, d.next_at, d.last_error,
                      state, self.owner) for d in batch],
                )

        await self._run(op)

    async def _select(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Delivery]:
        async def op(conn: AsyncConnection[Any]) -> list[Delivery]:
            cur = await conn.execute(query, params)
            return [_row(r) for r in await cur.fetchall()]

        return await self._run(op)

    async def adopt(self) -> list[Delivery]:
        """Take over ``replay`` rows and ``queued`` rows whose owner is gone; ``seq`` order.

        Concurrent adopters serialise on the row locks and re-check the condition, so a row is
        adopted once.
        """
        assert self.owner is not None
        return await self._select(
            f"with r as (update {TABLE} t set state = 'queued', owner = %(me)s, updated_at = now()"
            " where t.state = 'replay' or (t.state = 'queued' and t.owner is distinct from %(me)s"
            " and not exists (select 1 from pg_locks l where l.locktype = 'advisory' and l.granted"
            " and l.database = (select oid from pg_database where datname = current_database())"
            " and l.classid = %(k)s::oid and l.objid = hashtext(t.owner)::oid and l.objsubid = 2))"
            f" returning seq, {_COLUMNS}) select {', '.join(_COLUMN_ALIASES)} from r order by seq",
            {"me": self.owner, "k": _OWNER_LOCK},
        )

    async def done(self, d: Delivery) -> None:
        await self._run(lambda conn: conn.execute(f"delete from {TABLE} where id = %s", (d.id,)))

    async def retry(self, d: Delivery) -> None:
        await self._run(lambda conn: conn.execute(
            f"update {TABLE} set attempts = %s, next_at = to_timestamp(%s), last_error = %s, updated_at = now()"
            " where id = %s", (d.attempts, d.next_at, d.last_error, d.id)))

    async def dead(self, d: Delivery) -> None:
        await self._run(lambda conn: conn.execute(
            f"update {TABLE} set state = 'dead', attempts = %s, last_error = %s, updated_at = now() where id = %s",
            (d.attempts, d.last_error, d.id)))

    async def dead_list(self) -> list[Delivery]:
        return await self._select(f"select {_COLUMNS} from {TABLE} where state = 'dead' order by seq")

    async def revive(self, ids: Sequence[str] | None, state: str) -> list[Delivery]:
        """Dead rows (all, or these ids) go back to ``state`` with their attempts reset."""
        where = "state = 'dead'" if ids is None else "state = 'dead' and id::text = any(%s)"
        params: tuple[Any, ...] = (state, self.owner) if ids is None else (state, self.owner, list(ids))
        return await self._select(
            f"with r as (update {TABLE} set state = %s, owner = %s, attempts = 0, next_at = now(), updated_at = now()"
            f" where {where} returning seq, {_COLUMNS}) select {', '.join(_COLUMN_ALIASES)} from r order by seq",
            params,
        )


#: The columns of ``_COLUMNS`` as named in a ``returning`` CTE.
_COLUMN_ALIASES = ("id_text", "trigger", "topic", "event", "attempts", "next_epoch", "last_error")


def _dumps(obj: Any) -> str:
    return dumps(obj).decode()
