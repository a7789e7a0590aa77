"""Snapshot, then stream: a binding with ``snapshot: true`` first receives the rows that match it
now, as INSERTs, then live changes, with no row missed and none doubled (protocol.md §6.10).

The rows are read in one REPEATABLE READ transaction, as the subscriber's role with its claims
(so PostgreSQL applies the table's policies), only the columns the role may select.  The change
feed reads them where no transaction is being routed (its route lock), right after the channel's
subscriptions are registered, so every transaction routed before is in the snapshot; a
transaction routed after is in it exactly when its id is visible to the snapshot's
``pg_current_snapshot()``, and such transactions are not sent to the channel (``Snapshot``).  A
transaction that commits after ``pg_current_wal_insert_lsn()`` (read after the snapshot was
taken) cannot be in it, so the check ends there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
import psycopg
from psycopg import sql

from . import pgoutput
from .types import Change, Snapshot, TableInfo

__all__ = ["begin", "rows"]

_FETCH = 500
_US_2000 = 946_684_800_000_000


async def begin(conn: psycopg.AsyncConnection[Any], role: str, claims: Mapping[str, Any]) -> tuple[Snapshot, int]:
    """Take the snapshot in the transaction block ``conn`` has just begun, and become the
    subscriber (role and claims, as Supabase sets them).  Returns what the snapshot covers and
    its time (µs since 2000, for ``commit_timestamp``)."""
    await conn.execute("set transaction isolation level repeatable read, read only")
    cur = await conn.execute("select pg_catalog.pg_current_snapshot()::text, pg_catalog.now(),"
                             " pg_catalog.pg_current_wal_insert_lsn()::text")
    row = await cur.fetchone()
    assert row is not None
    await conn.execute(
        "select pg_catalog.set_config('role', %s, true), pg_catalog.set_config('request.jwt.claims', %s, true),"
        " pg_catalog.set_config('request.jwt.claim.sub', %s, true),"
        " pg_catalog.set_config('request.jwt.claim.role', %s, true)",
        (role, orjson.dumps(claims).decode(), str(claims.get("sub") or ""), role))
    return Snapshot.parse(row[0], row[2]), int(row[1].timestamp() * 1_000_000) - _US_2000


async def rows(conn: psycopg.AsyncConnection[Any], info: TableInfo, allowed: frozenset[str]) -> AsyncIterator[Change]:
    """The table's rows the subscriber may see (its policies applied by PostgreSQL), as INSERT
    changes of a relation shaped like pgoutput's; columns it may not select are NULL."""
    relation = pgoutput.Relation(info.relid, info.schema, info.name, "d", tuple(
        pgoutput.Column(1 if c.is_pk else 0, c.name, c.type_oid, -1) for c in info.columns))
    readable = [c.name for c in info.columns if c.name in allowed]
    query = sql.SQL("select {} from {}.{}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in readable) if readable
        else sql.SQL("1"),
        sql.Identifier(info.schema), sql.Identifier(info.name))
    if info.pk and all(k in allowed for k in info.pk):
        query = sql.SQL("{} order by {}").format(query, sql.SQL(", ").join(sql.Identifier(k) for k in info.pk))
    positions = {n: i for i, n in enumerate(readable)}
    async with conn.cursor(name=f"rc_snapshot_{info.relid}") as named:
        await named.execute(query)
        while batch := await named.fetchmany(_FETCH):
            for values in batch:
                tup = tuple(None if (p := positions.get(c.name)) is None or values[p] is None
                            else values[p].encode() for c in info.columns)
                yield Change(relation, "INSERT", pgoutput.TupleData(tup), None, None)
