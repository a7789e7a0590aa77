"""The ``realtime`` schema objects of private channels and database broadcast (protocol.md §4.7,
§7.3), installed by versioned, idempotent migrations at start-up.

Theory of operation
-------------------
* **Versioning**: ``realtime.rc_migrations`` records every applied version.  ``migrate`` takes a
  transaction-level advisory lock first, so two servers starting together take turns: the second
  one finds the versions already recorded and applies nothing.  All versions run in one
  transaction, so a failure leaves the database as it was.
* **Coexistence with Supabase**: a database that already has Supabase's ``realtime`` schema keeps
  its objects.  ``realtime.messages`` is used as it is when it exists, and each function is
  created only when no function of that signature exists (``to_regprocedure``).  Everything else
  we keep there carries the ``rc_`` prefix (CDC.md).
* **Partitions**: ``realtime.messages`` is range-partitioned by day on ``inserted_at``
  (``messages_YYYY_MM_DD``, UTC days).  ``ensure_partitions`` creates today's partition and the
  next ``DAYS_AHEAD`` days' and drops the ones older than the retention; the server calls it at
  start-up (through ``migrate``) and then periodically.
* **Timestamps**: our ``inserted_at`` default is ``clock_timestamp() at time zone 'utc'``
  rather than a bare ``now()``: UTC whatever the inserting session's ``TimeZone`` (so day
  partitions, retention and replay's ``since`` in milliseconds since the epoch, §4.8, agree), and
  the clock rather than the transaction start, so several sends in one transaction keep their
  order for replay.  Supabase's own table may use ``timestamp`` or ``timestamptz``; our
  statements compare with ``timestamptz`` values in a UTC session, which is right for both.

The SQL below is our own; only the names, signatures and semantics follow the reference
(protocol.md §4.7).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from psycopg import AsyncConnection, sql
from psycopg import errors as pg_errors

from ..cdc.sql import INSTALL_LOCK

__all__ = [
    "DAYS_AHEAD",
    "DEFAULT_PUBLICATION",
    "MIGRATIONS",
    "Migration",
    "ensure_partitions",
    "ensure_publication",
    "migrate",
    "partition_name",
    "purge_expired",
]

log = logging.getLogger(__name__)

#: Serialises migrations and partition maintenance across servers; "rc_migr" in ASCII.
_LOCK: Final = INSTALL_LOCK  # shared with every other installer of realtime.* objects
#: Partitions created beyond today, so a server that is down over midnight finds tomorrow's.
DAYS_AHEAD: Final = 3
#: protocol.md §4.7: the reference's publication for database broadcast.
DEFAULT_PUBLICATION: Final = "supabase_realtime_messages_publication"
#: The roles of a Supabase database (protocol.md §7.2); granted access when they exist.
_API_ROLES: Final = ("anon", "authenticated", "service_role")
_PARTITION_RE: Final = re.compile(r"^messages_(\d{4})_(\d{2})_(\d{2})$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[AsyncConnection[Any]], Awaitable[None]]


# --- version 1: realtime.messages -----------------------------------------------------------

# protocol.md §4.7: partitioned by day, (id, inserted_at) primary key, RLS enabled.  The CHECK
# keeps the JSON and binary bodies mutually exclusive; probe rows of §7.3 carry neither.
_MESSAGES_SQL: Final = (
    """
    create table realtime.messages (
        id uuid not null default gen_random_uuid(),
        topic text not null,
        extension text not null,
        payload jsonb,
        binary_payload bytea,
        event text,
        private boolean default false,
        inserted_at timestamp not null default (pg_catalog.clock_timestamp() at time zone 'utc'),
        updated_at timestamp not null default (pg_catalog.clock_timestamp() at time zone 'utc'),
        constraint messages_pkey primary key (id, inserted_at),
        constraint rc_messages_one_body check (payload is null or binary_payload is null)
    ) partition by range (inserted_at)
    """,
    "alter table realtime.messages enable row level security",
    # Replay (§4.8) reads the newest private broadcast rows of one topic.
    """
    create index rc_messages_replay_idx on realtime.messages (topic, inserted_at desc)
        where extension = 'broadcast' and private is true
    """,
)


async def _v1_messages(conn: AsyncConnection[Any]) -> None:
    if await _regclass(conn, "realtime.messages"):
        log.info("realtime.messages already exists; using it as it is")
        return
    for statement in _MESSAGES_SQL:
        await conn.execute(statement)


# --- version 2: functions -------------------------------------------------------------------

# realtime.topic(): the sub-topic being authorized or sent to, for RLS policies.  A custom
# setting once set in a session reads back as '' after its transaction: that means "none".
_TOPIC_SQL: Final = r"""
create function realtime.topic() returns text
language sql stable
as $fn$
    select nullif(pg_catalog.current_setting('realtime.topic', true), '')
$fn$
"""

# realtime.send(): one broadcast row.  Everything happens inside a block with an exception
# handler (a subtransaction), so a failure — RLS, a missing partition, a bad payload — undoes only
# this call and becomes a WARNING; the caller's transaction goes on (§4.7).  The row's id is
# generated here so it can be put into the payload when the payload has none.
_SEND_SQL: Final = r"""
create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void
language plpgsql volatile
as $fn$
declare
    row_id uuid;
    body jsonb;
begin
    begin
        if send.payload is null or pg_catalog.jsonb_typeof(send.payload) <> 'object' then
            raise exception 'payload must be a JSON object';
        end if;
        row_id := gen_random_uuid();
        body := send.payload;
        if not (body ? 'id') then
            body := body || pg_catalog.jsonb_build_object('id', row_id);
        end if;
        perform pg_catalog.set_config('realtime.topic', send.topic, true);
        insert into realtime.messages (id, topic, extension, payload, event, private)
        values (row_id, send.topic, 'broadcast', body, send.event, send.private);
    exception when others then
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
    end;
end
$fn$
"""

_SEND_BINARY_SQL: Final = r"""
create function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
returns void
language plpgsql volatile
as $fn$
begin
    begin
        if send_binary.payload is null then
            raise exception 'payload must not be null';
        end if;
        perform pg_catalog.set_config('realtime.topic', send_binary.topic, true);
        insert into realtime.messages (id, topic, extension, binary_payload, event, private)
        values (gen_random_uuid(), send_binary.topic, 'broadcast', send_binary.payload,
                send_binary.event, send_binary.private);
    exception when others then
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
    end;
end
$fn$
"""

# realtime.broadcast_changes(): for row-level triggers; the row images go out through
# realtime.send (private by default), so its warnings-not-errors rule applies to the insert.
# Misuse (statement level, an unknown operation) is the trigger author's bug and raises.
_BROADCAST_CHANGES_SQL: Final = r"""
create function realtime.broadcast_changes(
    topic_name text, event_name text, operation text, table_name text, table_schema text,
    new record, old record, level text default 'ROW'
)
returns void
language plpgsql volatile
as $fn$
begin
    if pg_catalog.upper(level) = 'STATEMENT' then
        raise exception 'realtime.broadcast_changes can only be used in row-level triggers';
    end if;
    if operation is null or operation not in ('INSERT', 'UPDATE', 'DELETE') then
        raise exception 'realtime.broadcast_changes: unexpected operation %', operation;
    end if;
    perform realtime.send(
        pg_catalog.jsonb_build_object(
            'old_record', pg_catalog.to_jsonb(old),
            'record', pg_catalog.to_jsonb(new),
            'operation', operation,
            'table', table_name,
            'schema', table_schema),
        event_name,
        topic_name);
end
$fn$
"""

#: (signature for to_regprocedure, creating SQL)
_FUNCTIONS: Final = (
    ("realtime.topic()", _TOPIC_SQL),
    ("realtime.send(jsonb,text,text,boolean)", _SEND_SQL),
    ("realtime.send_binary(bytea,text,text,boolean)", _SEND_BINARY_SQL),
    ("realtime.broadcast_changes(text,text,text,text,text,record,record,text)", _BROADCAST_CHANGES_SQL),
)


async def _v2_functions(conn: AsyncConnection[Any]) -> None:
    for signature, create in _FUNCTIONS:
        row = await (await conn.execute("select pg_catalog.to_regprocedure(%s) is not null", (signature,))).fetchone()
        if row is not None and row[0]:
            log.info("%s already exists; keeping it", signature)
            continue
        await conn.execute(create)


# --- version 3: grants ----------------------------------------------------------------------


async def _v3_grants(conn: AsyncConnection[Any]) -> None:
    """What the API roles need for §7.3 checks and for calling send/topic in their own sessions.

    Table privileges only open the door; RLS policies on ``realtime.messages`` decide."""
    rows = await (await conn.execute(
        "select rolname from pg_catalog.pg_roles where rolname = any(%s) order by rolname",
        (list(_API_ROLES),))).fetchall()
    roles = [sql.Identifier(r[0]) for r in rows]
    if not roles:
        log.info("none of the roles %s exists; no grants made", ", ".join(_API_ROLES))
        return
    grantees = sql.SQL(", ").join(roles)
    await conn.execute(sql.SQL("grant usage on schema realtime to {}").format(grantees))
    await conn.execute(sql.SQL("grant select, insert, update on realtime.messages to {}").format(grantees))
    for signature, _ in _FUNCTIONS:
        await conn.execute(sql.SQL("grant execute on function {} to {}").format(sql.SQL(signature), grantees))


# --- version 4: persisted broadcasts --------------------------------------------------------

# protocol.md §4.9: rows a client stored with `persist` are marked `skip_broadcast` (they were
# broadcast live already, so the feed does not send them again) and may expire.  Added to our
# table and to one Supabase created alike, keeping the columns when they exist.
_PERSIST_SQL: Final = (
    "alter table realtime.messages add column if not exists skip_broadcast boolean default false",
    "alter table realtime.messages add column if not exists expires_at timestamptz",
    "create index if not exists rc_messages_expires_idx on realtime.messages (expires_at)"
    " where expires_at is not null",
)


async def _v4_persist(conn: AsyncConnection[Any]) -> None:
    for statement in _PERSIST_SQL:
        await conn.execute(statement)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "realtime.messages partitioned by day", _v1_messages),
    Migration(2, "realtime.topic, send, send_binary, broadcast_changes", _v2_functions),
    Migration(3, "grants for anon, authenticated, service_role", _v3_grants),
    Migration(4, "skip_broadcast and expires_at for persisted broadcasts", _v4_persist),
)


async def purge_expired(conn: AsyncConnection[Any]) -> int:
    """Delete the persisted broadcasts whose ttl has run out (protocol.md §4.9); replay already
    skips them, this only frees the space before their partition is dropped."""
    cur = await conn.execute(
        "delete from realtime.messages where expires_at is not null and expires_at <= pg_catalog.now()")
    return cur.rowcount


# --- entry points ---------------------------------------------------------------------------


async def migrate(conn: AsyncConnection[Any], *, retention_days: int = 3, now: datetime | None = None) -> None:
    """Apply the missing migrations, then create/drop day partitions (``ensure_partitions``).

    Idempotent and safe to run from several servers at once.  Works on an autocommit connection
    and inside a transaction (then as a savepoint)."""
    if retention_days < 0:
        raise ValueError("retention_days must be >= 0")
    async with conn.transaction():
        await conn.execute("select pg_catalog.pg_advisory_xact_lock(%s)", (_LOCK,))
        # Checked first: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database.
        row = await (await conn.execute(
            "select 1 from pg_catalog.pg_namespace where nspname = 'realtime'")).fetchone()
        if row is None:
            await conn.execute("create schema realtime")
        await conn.execute(
            "create table if not exists realtime.rc_migrations ("
            " version int primary key, applied_at timestamptz not null default now())")
        applied = {r[0] for r in await (await conn.execute("select version from realtime.rc_migrations")).fetchall()}
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            await migration.apply(conn)
            await conn.execute("insert into realtime.rc_migrations (version) values (%s)", (migration.version,))
            log.info("applied realtime migration %d: %s", migration.version, migration.description)
    await ensure_partitions(conn, now if now is not None else datetime.now(UTC), retention_days)


def partition_name(day: date) -> str:
    """protocol.md §4.7: ``messages_YYYY_MM_DD``."""
    return f"messages_{day:%Y_%m_%d}"


def _utc_day(now: datetime) -> date:
    # A naive datetime is taken as UTC (the partitions are UTC days).
    return (now.astimezone(UTC) if now.tzinfo is not None else now).date()


async def ensure_partitions(
    conn: AsyncConnection[Any], now: datetime, retention_days: int, *, days_ahead: int = DAYS_AHEAD
) -> None:
    """Create the partitions of today (UTC) and the next ``days_ahead`` days; drop those whose
    day is more than ``retention_days`` before today.

    Only partitions named ``messages_YYYY_MM_DD`` are considered, so a default partition or any
    other attached table is left alone.  A partition that cannot be created (a range overlapping
    a differently named partition, rows for that day in a default partition) is logged and
    skipped; the others are still handled."""
    if retention_days < 0 or days_ahead < 0:
        raise ValueError("retention_days and days_ahead must be >= 0")
    today = _utc_day(now)
    async with conn.transaction():
        await conn.execute("select pg_catalog.pg_advisory_xact_lock(%s)", (_LOCK,))
        # Bounds are UTC days, also when the column is timestamptz (Supabase's newer table).
        await conn.execute("select pg_catalog.set_config('TimeZone', 'UTC', true)")
        row = await (await conn.execute(
            "select c.relkind from pg_catalog.pg_class c where c.oid = pg_catalog.to_regclass('realtime.messages')"
        )).fetchone()
        if row is None or row[0] != "p":
            log.warning("realtime.messages is missing or not partitioned; no partitions managed")
            return
        rows = await (await conn.execute(
            "select c.relname from pg_catalog.pg_inherits i"
            " join pg_catalog.pg_class c on c.oid = i.inhrelid"
            " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
            " where i.inhparent = 'realtime.messages'::regclass and n.nspname = 'realtime'")).fetchall()
        existing = {r[0] for r in rows}
        for offset in range(days_ahead + 1):
            day = today + timedelta(days=offset)
            name = partition_name(day)
            if name not in existing:
                await _create_partition(conn, name, day)
        cutoff = today - timedelta(days=retention_days)
        for name in sorted(existing):
            day_of = _partition_day(name)
            if day_of is not None and day_of < cutoff:
                await conn.execute(sql.SQL("drop table realtime.{}").format(sql.Identifier(name)))
                log.info("dropped partition realtime.%s (retention %d days)", name, retention_days)


def _partition_day(name: str) -> date | None:
    m = _PARTITION_RE.match(name)
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


async def _create_partition(conn: AsyncConnection[Any], name: str, day: date) -> None:
    statement = sql.SQL(
        "create table realtime.{} partition of realtime.messages for values from ({}) to ({})"
    ).format(sql.Identifier(name), sql.Literal(day.isoformat()), sql.Literal((day + timedelta(days=1)).isoformat()))
    try:
        async with conn.transaction():  # a savepoint: one bad day must not undo the others
            await conn.execute(statement)
    except (pg_errors.InvalidObjectDefinition, pg_errors.CheckViolation, pg_errors.DuplicateTable) as exc:
        log.warning("cannot create partition realtime.%s: %s", name, str(exc).strip().splitlines()[0])
    else:
        log.info("created partition realtime.%s", name)


async def ensure_publication(conn: AsyncConnection[Any], publication: str = DEFAULT_PUBLICATION) -> None:
    """Make ``publication`` publish ``realtime.messages`` through its root (protocol.md §4.7).

    Created with only that table (and only inserts) when missing; an existing publication gets
    the table added when absent and ``publish_via_partition_root`` switched on, because the
    feed recognises rows by the root's name.  Raises ``psycopg.Error`` when ``realtime.messages``
    does not exist (migrations not run)."""
    pub = sql.Identifier(publication)
    async with conn.transaction():
        await conn.execute("select pg_catalog.pg_advisory_xact_lock(%s)", (_LOCK,))
        row = await (await conn.execute(
            "select p.puballtables, p.pubviaroot,"
            " exists (select 1 from pg_catalog.pg_publication_rel r"
            "         where r.prpubid = p.oid and r.prrelid = 'realtime.messages'::regclass)"
            " from pg_catalog.pg_publication p where p.pubname = %s", (publication,))).fetchone()
        if row is None:
            await conn.execute(sql.SQL(
                "create publication {} for table realtime.messages"
                " with (publish = 'insert', publish_via_partition_root = true)").format(pub))
            log.info("created publication %s for realtime.messages", publication)
            return
        all_tables, via_root, has_table = row
        if not all_tables and not has_table:
            await conn.execute(sql.SQL("alter publication {} add table realtime.messages").format(pub))
            log.info("added realtime.messages to publication %s", publication)
        if not via_root:
            await conn.execute(sql.SQL("alter publication {} set (publish_via_partition_root = true)").format(pub))
            log.info("publication %s now publishes via the partition root", publication)


async def _regclass(conn: AsyncConnection[Any], name: str) -> bool:
    row = await (await conn.execute("select pg_catalog.to_regclass(%s) is not null", (name,))).fetchone()
    return bool(row and row[0])

