"""Migrations of the ``realtime`` schema and the SQL functions' semantics (protocol.md §4.7)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from realtime_channels.messages.migrations import (
    DAYS_AHEAD,
    MIGRATIONS,
    ensure_partitions,
    ensure_publication,
    migrate,
    partition_name,
    purge_expired,
)


async def _migrate(db: Any, **kwargs: Any) -> None:
    async with await db.aconnect() as conn:
        await migrate(conn, **kwargs)


def _partitions(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
        " where i.inhparent = 'realtime.messages'::regclass").fetchall()
    return {r[0] for r in rows}


def _columns(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    rows = conn.execute(
        "select attname, format_type(atttypid, atttypmod) from pg_attribute"
        " where attrelid = %s::regclass and attnum > 0 and not attisdropped", (table,)).fetchall()
    return {r[0]: r[1] for r in rows}


@pytest.fixture(scope="module")
def db(msg_db: Any) -> Any:
    """The module database, migrated once (tests that need a pristine one use ``fresh_db``)."""
    asyncio.run(_migrate(msg_db))
    return msg_db


# --- migrations -----------------------------------------------------------------------------


async def test_migrate_creates_the_schema_objects(fresh_db: Any) -> None:
    await _migrate(fresh_db)
    with fresh_db.connect() as conn:
        relkind, rls = conn.execute(
            "select relkind, relrowsecurity from pg_class where oid = 'realtime.messages'::regclass").fetchone()
        assert (relkind, rls) == ("p", True)
        assert _columns(conn, "realtime.messages") == {
            "id": "uuid", "topic": "text", "extension": "text", "payload": "jsonb",
            "binary_payload": "bytea", "event": "text", "private": "boolean",
            "inserted_at": "timestamp without time zone", "updated_at": "timestamp without time zone",
            "skip_broadcast": "boolean", "expires_at": "timestamp with time zone",  # §4.9
        }
        pk = conn.execute(
            "select array_agg(a.attname order by a.attname) from pg_index i"
            " join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)"
            " where i.indrelid = 'realtime.messages'::regclass and i.indisprimary").fetchone()[0]
        assert sorted(pk) == ["id", "inserted_at"]
        strategy = conn.execute(
            "select partstrat, (select attname from pg_attribute where attrelid = partrelid and attnum = partattrs[0])"
            " from pg_partitioned_table where partrelid = 'realtime.messages'::regclass").fetchone()
        assert strategy == ("r", "inserted_at")
        for signature in ("realtime.topic()", "realtime.send(jsonb,text,text,boolean)",
                          "realtime.send_binary(bytea,text,text,boolean)",
                          "realtime.broadcast_changes(text,text,text,text,text,record,record,text)"):
            assert conn.execute("select to_regprocedure(%s) is not null", (signature,)).fetchone()[0], signature
        for role in ("anon", "authenticated", "service_role"):
            assert conn.execute(
                "select has_table_privilege(%s, 'realtime.messages', 'select, insert')"
                " and has_schema_privilege(%s, 'realtime', 'usage')"
                " and has_function_privilege(%s, 'realtime.send(jsonb,text,text,boolean)', 'execute')"
                " and has_function_privilege(%s, 'realtime.topic()', 'execute')",
                (role, role, role, role)).fetchone()[0], role
        today = datetime.now(UTC).date()
        expected = {partition_name(today + timedelta(days=i)) for i in range(DAYS_AHEAD + 1)}
        assert expected <= _partitions(conn)


async def test_migrate_twice_is_idempotent(fresh_db: Any) -> None:
    await _migrate(fresh_db)
    with fresh_db.connect() as conn:
        first = conn.execute("select version, applied_at from realtime.rc_migrations order by version").fetchall()
        conn.execute("insert into realtime.messages (topic, extension, event, payload) values ('t', 'broadcast', 'e', '{}')")
    await _migrate(fresh_db)
    with fresh_db.connect() as conn:
        second = conn.execute("select version, applied_at from realtime.rc_migrations order by version").fetchall()
        assert [v for v, _ in first] == [m.version for m in MIGRATIONS]
        assert second == first  # nothing re-applied
        assert conn.execute("select count(*) from realtime.messages").fetchone()[0] == 1  # data kept


async def test_concurrent_migrations_take_turns(fresh_db: Any) -> None:
    conns = [await fresh_db.aconnect() for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    with fresh_db.connect() as conn:
        versions = [r[0] for r in conn.execute("select version from realtime.rc_migrations order by version")]
        assert versions == [m.version for m in MIGRATIONS]


async def test_migrate_inside_a_caller_transaction(fresh_db: Any) -> None:
    async with await psycopg.AsyncConnection.connect(fresh_db.dsn) as conn:  # not autocommit
        await conn.execute("select 1")  # a transaction is open: migrate works in savepoints
        await migrate(conn)
        await conn.rollback()
    with fresh_db.connect() as conn:
        assert conn.execute("select to_regclass('realtime.messages')").fetchone()[0] is None


async def test_existing_supabase_schema_is_used_as_it_is(fresh_db: Any) -> None:
    # A Supabase-like realtime schema from before binary payloads, with the user's own policy and
    # Supabase's own topic() (here distinguishable by its body).
    with fresh_db.connect() as conn:
        conn.execute("create schema realtime")
        conn.execute(
            "create table realtime.messages (topic text not null, extension text not null, payload jsonb,"
            " event text, private boolean default false, updated_at timestamp not null default now(),"
            " inserted_at timestamp not null default now(), id uuid not null default gen_random_uuid(),"
            " primary key (id, inserted_at)) partition by range (inserted_at)")
        conn.execute("alter table realtime.messages enable row level security")
        conn.execute("create policy theirs on realtime.messages for select to authenticated using (true)")
        conn.execute("create function realtime.topic() returns text language sql stable"
                     " as $$ select 'supabase-topic'::text $$")
        before = _columns(conn, "realtime.messages")
    await _migrate(fresh_db)
    with fresh_db.connect() as conn:
        # nothing changed but the two columns persisted broadcasts need (§4.9)
        assert _columns(conn, "realtime.messages") == {
            **before, "skip_broadcast": "boolean", "expires_at": "timestamp with time zone"}
        assert conn.execute("select realtime.topic()").fetchone()[0] == "supabase-topic"
        assert conn.execute(
            "select policyname from pg_policies where schemaname = 'realtime' and tablename = 'messages'"
        ).fetchall() == [("theirs",)]
        assert conn.execute("select to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null").fetchone()[0]
        today = datetime.now(UTC).date()
        assert partition_name(today) in _partitions(conn)
        # Our send works against their table.
        conn.execute("select realtime.send('{\"x\": 1}', 'evt', 'room-s', false)")
        payload, private = conn.execute(
            "select payload, private from realtime.messages where topic = 'room-s'").fetchone()
        assert payload["x"] == 1 and "id" in payload and private is False


async def test_persist_columns_supabase_already_has_are_kept(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        conn.execute("create schema realtime")
        conn.execute(
            "create table realtime.messages (topic text not null, extension text not null, payload jsonb,"
            " event text, private boolean default false, inserted_at timestamp not null default now(),"
            " id uuid not null default gen_random_uuid(), skip_broadcast boolean not null default false,"
            " primary key (id, inserted_at)) partition by range (inserted_at)")
        before = _columns(conn, "realtime.messages")
    await _migrate(fresh_db)
    await _migrate(fresh_db)
    with fresh_db.connect() as conn:
        assert _columns(conn, "realtime.messages") == {**before, "expires_at": "timestamp with time zone"}
        assert conn.execute("select attnotnull from pg_attribute where attrelid = 'realtime.messages'::regclass"
                            " and attname = 'skip_broadcast'").fetchone()[0] is True  # theirs, unchanged


async def test_purge_deletes_only_expired_rows(fresh_db: Any) -> None:
    await _migrate(fresh_db)
    with fresh_db.connect() as conn:
        conn.execute("insert into realtime.messages (topic, extension, event, payload, expires_at) values"
                     " ('t', 'broadcast', 'gone', '{}', now() - interval '1 s'),"
                     " ('t', 'broadcast', 'soon', '{}', now() + interval '1 h'),"
                     " ('t', 'broadcast', 'kept', '{}', null)")
    async with await fresh_db.aconnect() as aconn:
        assert await purge_expired(aconn) == 1
    with fresh_db.connect() as conn:
        assert [r[0] for r in conn.execute("select event from realtime.messages order by event")] == ["kept", "soon"]


async def test_partitions_created_and_dropped_by_retention(fresh_db: Any) -> None:
    await _migrate(fresh_db)
    d0 = date(2091, 3, 30)  # far from today: the real partitions are dropped along the way too
    async with await fresh_db.aconnect() as conn:
        await ensure_partitions(conn, datetime(2091, 3, 30, 23, 59, tzinfo=UTC), 10)
    with fresh_db.connect() as conn:
        conn.execute("create table realtime.rc_other partition of realtime.messages default")
        first = _partitions(conn)
        assert {partition_name(d0 + timedelta(days=i)) for i in range(DAYS_AHEAD + 1)} <= first
        assert partition_name(date(2091, 4, 2)) == "messages_2091_04_02"
        # A row lands in its day's partition.
        part = conn.execute(
            "insert into realtime.messages (topic, extension, inserted_at) values ('p', 'broadcast', '2091-03-31 12:00')"
            " returning tableoid::regclass::text").fetchone()[0]
        assert part == "realtime.messages_2091_03_31"
    async with await fresh_db.aconnect() as conn:
        # Naive datetimes are UTC; retention 2 keeps the days from 2091-04-01 on.
        await ensure_partitions(conn, datetime(2091, 4, 3, 0, 1), 2)
    with fresh_db.connect() as conn:
        parts = _partitions(conn)
        days = {p for p in parts if p.startswith("messages_")}
        assert days == {partition_name(date(2091, 4, 1) + timedelta(days=i)) for i in range(DAYS_AHEAD + 3)}
        assert "rc_other" in parts  # not ours to drop
        assert conn.execute("select count(*) from realtime.messages where topic = 'p'").fetchone()[0] == 0


async def test_partition_blocked_by_default_partition_rows_is_skipped(fresh_db: Any) -> None:
    await _migrate(fresh_db)
    with fresh_db.connect() as conn:
        conn.execute("create table realtime.messages_default partition of realtime.messages default")
        conn.execute("insert into realtime.messages (topic, extension, inserted_at) values ('d', 'broadcast', '2092-01-02 08:00')")
    async with await fresh_db.aconnect() as conn:
        await ensure_partitions(conn, datetime(2092, 1, 1, tzinfo=UTC), 3)
    with fresh_db.connect() as conn:
        parts = _partitions(conn)
        assert "messages_2092_01_02" not in parts  # its rows sit in the default partition
        assert {"messages_2092_01_01", "messages_2092_01_03", "messages_2092_01_04"} <= parts


async def test_ensure_partitions_rejects_negative_retention(db: Any) -> None:
    async with await db.aconnect() as conn:
        with pytest.raises(ValueError):
            await ensure_partitions(conn, datetime.now(UTC), -1)


# --- realtime.send / send_binary / topic ------------------------------------------------------


def _warnings(conn: psycopg.Connection[Any]) -> list[str]:
    seen: list[str] = []
    conn.add_notice_handler(lambda d: seen.append(f"{d.severity}: {d.message_primary}"))
    return seen


def test_send_adds_the_row_id_and_sets_the_topic(db: Any) -> None:
    topic = f"room-{uuid.uuid4().hex[:8]}"
    with db.connect() as conn:
        with conn.transaction():
            conn.execute("select realtime.send('{\"text\": \"hi\"}', 'note', %s, false)", (topic,))
            assert conn.execute("select realtime.topic()").fetchone()[0] == topic
        assert conn.execute("select realtime.topic()").fetchone()[0] is None  # transaction-local
        row_id, payload, event, private, extension = conn.execute(
            "select id, payload, event, private, extension from realtime.messages where topic = %s",
            (topic,)).fetchone()
        assert payload == {"text": "hi", "id": str(row_id)}
        assert (event, private, extension) == ("note", False, "broadcast")


def test_send_keeps_an_existing_id_and_defaults_to_private(db: Any) -> None:
    topic = f"room-{uuid.uuid4().hex[:8]}"
    with db.connect() as conn:
        conn.execute("select realtime.send('{\"id\": 42, \"a\": [1]}', 'e', %s)", (topic,))
        row_id, payload, private = conn.execute(
            "select id, payload, private from realtime.messages where topic = %s", (topic,)).fetchone()
        assert payload == {"id": 42, "a": [1]}
        assert private is True and isinstance(row_id, uuid.UUID)


def test_send_errors_are_warnings_and_never_abort_the_transaction(db: Any) -> None:
    topic = f"room-{uuid.uuid4().hex[:8]}"
    with db.connect() as conn:
        seen = _warnings(conn)
        with conn.transaction():
            conn.execute("create temp table keep (x int)")
            conn.execute("select realtime.send(null, 'e', %s)", (topic,))
            conn.execute("select realtime.send('[1, 2]', 'e', %s)", (topic,))
            conn.execute("select realtime.send_binary(null, 'e', %s)", (topic,))
            # RLS: authenticated has no INSERT policy in this database, so its send fails too.
            conn.execute("set local role authenticated")
            conn.execute("select realtime.send('{}', 'e', %s)", (topic,))
            conn.execute("reset role")
            conn.execute("insert into keep values (1)")  # the transaction is still usable
        assert conn.execute("select count(*) from keep").fetchone()[0] == 1
        assert conn.execute("select count(*) from realtime.messages where topic = %s", (topic,)).fetchone()[0] == 0
    assert len(seen) == 4, seen
    assert all(s.startswith("WARNING: WarnSendingBroadcastMessage: ") for s in seen), seen
    assert "row-level security" in seen[3]


def test_send_binary_stores_the_bytes(db: Any) -> None:
    topic = f"bin-{uuid.uuid4().hex[:8]}"
    body = bytes([0, 1, 0x5C, 0xFF, 0x80]) + b"text"
    with db.connect() as conn:
        conn.execute("select realtime.send_binary(%s, 'blob', %s)", (body, topic))
        stored, payload, private, event = conn.execute(
            "select binary_payload, payload, private, event from realtime.messages where topic = %s",
            (topic,)).fetchone()
        assert bytes(stored) == body and payload is None and private is True and event == "blob"


# --- realtime.broadcast_changes ---------------------------------------------------------------


def test_broadcast_changes_payload_shape(db: Any) -> None:
    table = f"notes_{uuid.uuid4().hex[:8]}"
    topic = f"{table}:7"
    with db.connect() as conn:
        conn.execute(f"create table public.{table} (id int primary key, body text)")
        conn.execute(
            f"create function public.{table}_bc() returns trigger language plpgsql as $$"
            f" begin perform realtime.broadcast_changes('{topic}', TG_OP, TG_OP, TG_TABLE_NAME,"
            " TG_TABLE_SCHEMA, NEW, OLD); return null; end $$")
        conn.execute(f"create trigger bc after insert or update or delete on public.{table}"
                     f" for each row execute function public.{table}_bc()")
        conn.execute(f"insert into public.{table} values (7, 'hi')")
        conn.execute(f"update public.{table} set body = 'ho' where id = 7")
        conn.execute(f"delete from public.{table} where id = 7")
        rows = conn.execute(
            "select id, event, payload, private from realtime.messages where topic = %s order by inserted_at",
            (topic,)).fetchall()
    assert [r[1] for r in rows] == ["INSERT", "UPDATE", "DELETE"]
    assert all(r[3] is True for r in rows)  # through realtime.send: private by default
    common = {"table": table, "schema": "public"}
    assert rows[0][2] == {"id": str(rows[0][0]), "operation": "INSERT", "record": {"id": 7, "body": "hi"},
                          "old_record": None, **common}
    assert rows[1][2] == {"id": str(rows[1][0]), "operation": "UPDATE", "record": {"id": 7, "body": "ho"},
                          "old_record": {"id": 7, "body": "hi"}, **common}
    assert rows[2][2] == {"id": str(rows[2][0]), "operation": "DELETE", "record": None,
                          "old_record": {"id": 7, "body": "ho"}, **common}
    assert json.dumps(rows[0][2])  # plain JSON all the way down


def test_broadcast_changes_refuses_statement_level(db: Any) -> None:
    with db.connect() as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="row-level"):
            conn.execute("select realtime.broadcast_changes('t', 'e', 'INSERT', 'x', 'public', null::record,"
                         " null::record, 'STATEMENT')")
        with pytest.raises(psycopg.errors.RaiseException, match="unexpected operation"):
            conn.execute("select realtime.broadcast_changes('t', 'e', 'TRUNCATE', 'x', 'public', null::record,"
                         " null::record)")


# --- publication ----------------------------------------------------------------------------


def _publication(conn: psycopg.Connection[Any], name: str) -> tuple[Any, ...]:
    row = conn.execute(
        "select p.pubviaroot, p.pubinsert, array(select r.prrelid::regclass::text from pg_publication_rel r"
        " where r.prpubid = p.oid order by 1) from pg_publication p where p.pubname = %s", (name,)).fetchone()
    assert row is not None
    return tuple(row)


async def test_ensure_publication_creates_and_repairs(db: Any) -> None:
    name = f"pub_{uuid.uuid4().hex[:8]}"
    async with await db.aconnect() as conn:
        await ensure_publication(conn, name)
        await ensure_publication(conn, name)  # idempotent
    with db.connect() as conn:
        assert _publication(conn, name) == (True, True, ["realtime.messages"])
        broken = f"pub_{uuid.uuid4().hex[:8]}"
        conn.execute(f"create publication {broken}")  # empty, not via root
    async with await db.aconnect() as conn:
        await ensure_publication(conn, broken)
    with db.connect() as conn:
        assert _publication(conn, broken) == (True, True, ["realtime.messages"])


async def test_ensure_publication_needs_the_table(fresh_db: Any) -> None:
    async with await fresh_db.aconnect() as conn:
        with pytest.raises(psycopg.Error):
            await ensure_publication(conn, "pub_missing")
