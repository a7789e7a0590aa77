"""Catalog look-ups for ``postgres_changes``: publication tables, table shape, roles and column
privileges (protocol.md §6.1, §6.3, §6.6, §6.8), plus a cache the change path can afford.

Async adapters over a caller-owned ``psycopg.AsyncConnection`` (a normal connection, not the
replication one); nothing here owns a pool or a connection.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

from psycopg import AsyncConnection

from .types import ColumnInfo, TableInfo

__all__ = [
    "CatalogCache",
    "ColumnInfo",
    "TableInfo",
    "match_tables",
    "publication_tables",
    "role_exists",
    "selectable_columns",
    "table_info",
]


# --- queries -----------------------------------------------------------------------------------


async def publication_tables(conn: AsyncConnection[Any], publication: str) -> list[tuple[str, str]]:
    """``(schema, table)`` of every table in ``publication`` (empty if it does not exist),
    sorted; only these can be subscribed (protocol.md §6.1, §6.9)."""
    cur = await conn.execute(
        "select schemaname::text, tablename::text from pg_catalog.pg_publication_tables"
        " where pubname = %s order by 1, 2",
        (publication,),
    )
    return [(str(s), str(t)) for s, t in await cur.fetchall()]


# Domains resolve to their base type by walking typbasetype (a domain may sit on a domain);
# arrays get their element type resolved the same way. The PK position comes from the primary
# key index so composite keys keep their declared order.
_TABLE_INFO_SQL = """
select c.oid::int8, n.nspname::text, c.relname::text, c.relrowsecurity,
       a.attnum::int, a.attname::text, a.atttypid::int8, bt.oid::int8, bt.typname::text,
       el.oid::int8, pk.pos
  from pg_catalog.pg_class c
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  left join pg_catalog.pg_attribute a
         on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
  left join lateral (
      with recursive d(oid, depth) as (
          select a.atttypid, 0
          union all
          select t.typbasetype, d.depth + 1
            from d join pg_catalog.pg_type t on t.oid = d.oid
           where t.typtype = 'd'
      )
      select t.oid, t.typname, t.typelem, t.typcategory
        from d join pg_catalog.pg_type t on t.oid = d.oid
       order by d.depth desc limit 1
  ) bt on true
  left join lateral (
      with recursive d(oid, depth) as (
          select bt.typelem, 0 where bt.typcategory = 'A' and bt.typelem <> 0
          union all
          select t.typbasetype, d.depth + 1
            from d join pg_catalog.pg_type t on t.oid = d.oid
           where t.typtype = 'd'
      )
      select t.oid from d join pg_catalog.pg_type t on t.oid = d.oid
       order by d.depth desc limit 1
  ) el on true
  left join lateral (
      select pg_catalog.array_position(i.indkey::int2[], a.attnum) as pos
        from pg_catalog.pg_index i
       where i.indrelid = c.oid and i.indisprimary
  ) pk on true
 where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p')
 order by a.attnum
"""


async def table_info(conn: AsyncConnection[Any], schema: str, table: str) -> TableInfo | None:
    """The table ``schema.table`` (ordinary or partitioned), or ``None`` if there is none."""
    cur = await conn.execute(_TABLE_INFO_SQL, (schema, table))
    rows = await cur.fetchall()
    if not rows:
        return None
    relid, nsp, rel, rls = int(rows[0][0]), str(rows[0][1]), str(rows[0][2]), bool(rows[0][3])
    columns: list[ColumnInfo] = []
    pk_positions: list[tuple[int, str]] = []
    for row in rows:
        if row[4] is None:  # a table with no user columns at all
            continue
        attnum, name, type_oid, base_oid, base_name, elem_oid, pos = row[4:11]
        columns.append(
            ColumnInfo(
                name=str(name),
                type_name=str(base_name),
                type_oid=int(type_oid),
                base_type_oid=int(base_oid),
                is_pk=pos is not None,
                attnum=int(attnum),
                element_type_oid=None if elem_oid is None else int(elem_oid),
            )
        )
        if pos is not None:
            pk_positions.append((int(pos), str(name)))
    pk = tuple(name for _, name in sorted(pk_positions))
    return TableInfo(relid=relid, schema=nsp, name=rel, columns=tuple(columns), pk=pk,
                     rls_enabled=rls)


async def role_exists(conn: AsyncConnection[Any], role: str) -> bool:
    """Whether ``role`` names a database role; the JWT ``role`` claim is used verbatim as one
    (protocol.md §7.2, §6.3)."""
    cur = await conn.execute(
        "select exists (select 1 from pg_catalog.pg_roles where rolname = %s)", (role,)
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def selectable_columns(conn: AsyncConnection[Any], role: str, relid: int) -> frozenset[str]:
    """Names of the columns of ``relid`` that ``role`` may SELECT, table- or column-level grants
    alike (protocol.md §6.6, §6.8). Empty for a role or table that does not exist."""
    # The role is resolved to an oid first so has_column_privilege never sees an unknown name
    # (which would raise instead of answering "nothing").
    cur = await conn.execute(
        """
        select coalesce(pg_catalog.array_agg(a.attname::text order by a.attnum), '{}')
          from pg_catalog.pg_roles r
          join pg_catalog.pg_attribute a
            on a.attrelid = %s::oid and a.attnum > 0 and not a.attisdropped
         where r.rolname = %s
           and pg_catalog.has_column_privilege(r.oid, a.attrelid, a.attnum, 'SELECT')
        """,
        (relid, role),
    )
    row = await cur.fetchone()
    return frozenset(str(n) for n in (row[0] if row else ()))


# --- matching bindings to tables (protocol.md §6.1) --------------------------------------------


def _like_regex(pattern: str) -> re.Pattern[str]:
    # SQL LIKE with ESCAPE '' as the reference uses it: '%' is any run, '_' any one character,
    # nothing is an escape (a backslash is literal), and the whole name must match.
    parts = (".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


def match_tables(
    published: Iterable[tuple[str, str]], schema: str | None, table: str | None
) -> list[tuple[str, str]]:
    """The published ``(schema, table)`` pairs a binding's ``schema``/``table`` select
    (protocol.md §6.1), in the order given.

    A value of exactly ``*`` matches everything; otherwise the value is a SQL ``LIKE`` pattern,
    so ``_`` and ``%`` inside a name act as wildcards, as in the reference. An absent table
    means every table of the schema; an absent schema with a table means ``public``. With
    neither, nothing matches (the caller rejects such a binding first)."""
    if schema is None and table is None:
        return []
    schema_pattern = "public" if schema is None else schema
    table_pattern = "*" if table is None else table
    schema_re = _like_regex("%" if schema_pattern == "*" else schema_pattern)
    table_re = _like_regex("%" if table_pattern == "*" else table_pattern)
    return [
        (s, t) for s, t in published if schema_re.fullmatch(s) and table_re.fullmatch(t)
    ]


# --- cache --------------------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Memo(Generic[K, V]):
    """Values by key for ``max_age`` seconds, with concurrent misses on one key sharing one
    query. A load that overlaps an invalidation is returned but not kept (it may predate it)."""

    def __init__(
        self,
        max_age: float,
        clock: Callable[[], float],
        keep: Callable[[V], bool] = lambda _value: True,
    ) -> None:
        self._max_age = max_age
        self._clock = clock
        self._keep = keep
        self._values: dict[K, tuple[V, float]] = {}
        self._loading: dict[K, asyncio.Task[V]] = {}
        self._generation = 0

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        hit = self._values.get(key)
        if hit is not None and hit[1] > self._clock():
            return hit[0]
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, load))
            self._loading[key] = task
            task.add_done_callback(self._loaded(key))
        # shield: one caller giving up must not cancel the query the others wait for.
        return await asyncio.shield(task)

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        generation = self._generation
        value = await load()
        if self._keep(value) and self._max_age > 0 and generation == self._generation:
            self._values[key] = (value, self._clock() + self._max_age)
        return value

    def _loaded(self, key: K) -> Callable[[asyncio.Task[V]], None]:
        def done(task: asyncio.Task[V]) -> None:
            if self._loading.get(key) is task:
                del self._loading[key]
            if not task.cancelled():
                task.exception()  # retrieved: every waiter may have been cancelled

        return done

    def drop(self, predicate: Callable[[K, V], bool] | None = None) -> None:
        self._generation += 1
        if predicate is None:
            self._values.clear()
        else:
            for key in [k for k, (v, _) in self._values.items() if predicate(k, v)]:
                del self._values[key]


class CatalogCache:
    """The look-ups above, cached for the change path.

    Call ``invalidate(relid)`` when a pgoutput Relation message arrives for ``relid``: PostgreSQL
    sends one before the next change after any schema change of the table (postgres-cdc.md
    "Schema changes mid-stream"); ``invalidate()`` drops everything. ``max_age`` bounds how
    long anything the stream does not announce (a GRANT, a new role, RLS switched on) can stay
    stale. Publication membership is only shared between concurrent callers by default
    (``publication_max_age=0``), so a table just added with ``ALTER PUBLICATION`` is
    subscribable at once. Missing tables are never cached."""

    def __init__(
        self,
        *,
        max_age: float = 60.0,
        publication_max_age: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publications: _Memo[str, list[tuple[str, str]]] = _Memo(publication_max_age, clock)
        self._tables: _Memo[tuple[str, str], TableInfo | None] = _Memo(
            max_age, clock, keep=lambda info: info is not None
        )
        self._roles: _Memo[str, bool] = _Memo(max_age, clock)
        self._columns: _Memo[tuple[str, int], frozenset[str]] = _Memo(max_age, clock)

    async def publication_tables(
        self, conn: AsyncConnection[Any], publication: str
    ) -> list[tuple[str, str]]:
        tables = await self._publications.get(
            publication, lambda: publication_tables(conn, publication)
        )
        return list(tables)

    async def table_info(
        self, conn: AsyncConnection[Any], schema: str, table: str
    ) -> TableInfo | None:
        return await self._tables.get((schema, table), lambda: table_info(conn, schema, table))

    async def role_exists(self, conn: AsyncConnection[Any], role: str) -> bool:
        return await self._roles.get(role, lambda: role_exists(conn, role))

    async def selectable_columns(
        self, conn: AsyncConnection[Any], role: str, relid: int
    ) -> frozenset[str]:
        return await self._columns.get((role, relid), lambda: selectable_columns(conn, role, relid))

    def invalidate(self, relid: int | None = None) -> None:
        """Forget what is known about table ``relid`` (its shape and column privileges), or
        everything when ``relid`` is ``None``."""
        if relid is None:
            for memo in (self._publications, self._tables, self._roles, self._columns):
                memo.drop()
            return
        self._tables.drop(lambda _k, info: info is not None and info.relid == relid)
        self._columns.drop(lambda key, _v: key[1] == relid)
