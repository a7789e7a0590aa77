"""Broadcast from the database: committed inserts into ``realtime.messages`` arrive as
``DbMessage`` through logical replication (protocol.md §4.7)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from realtime_channels.cdc import pgoutput
from realtime_channels.messages.authz import ChannelAuthorizer
from realtime_channels.messages.dbbroadcast import DatabaseBroadcasts, DbMessage, decode_bytea, message_from_row
from realtime_channels.messages.migrations import migrate

READY = 30.0  # seconds for the feed to reach "streaming"
ARRIVAL = 10.0  # seconds for a committed row to arrive


class Feed:
    """A running DatabaseBroadcasts and everything it delivered."""

    def __init__(self, dsn: str, publication: str, slot: str) -> None:
        self.messages: list[DbMessage] = []
        self.states: list[tuple[str, str | None]] = []
        self._changed = asyncio.Event()
        self.db = DatabaseBroadcasts(dsn, publication=publication, slot=slot, on_message=self._on_message,
                                     on_state=self._on_state, reconnect_min=0.1, reconnect_max=0.5)

    def _on_message(self, msg: DbMessage) -> None:
        self.messages.append(msg)
        self._changed.set()

    def _on_state(self, state: str, detail: str | None) -> None:
        self.states.append((state, detail))
        self._changed.set()

    async def wait_for(self, cond: Callable[[], bool], what: str, timeout: float = ARRIVAL) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.messages} states {self.states}")
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def on_topic(self, topic: str) -> list[DbMessage]:
        return [m for m in self.messages if m.sub_topic == topic]


@pytest.fixture(scope="module")
def db(msg_db: Any) -> Any:
    async def setup() -> None:
        async with await msg_db.aconnect() as conn:
            await migrate(conn)

    asyncio.run(setup())
    return msg_db


def _drop_slot(db: Any, slot: str) -> None:
    with db.connect() as conn:
        conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots"
                     " where slot_name = %s and not active", (slot,))


@pytest.fixture
async def feed(db: Any) -> AsyncIterator[Feed]:
    slot = f"rc_msg_{uuid.uuid4().hex[:8]}"
    f = Feed(db.dsn, "supabase_realtime_messages_publication", slot)
    await f.db.start()
    try:
        assert await f.db.wait_streaming(READY), f.states
        yield f
    finally:
        await f.db.stop()
        _drop_slot(db, slot)


def topic(prefix: str = "room") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:8]}"


async def test_send_public_and_private_arrive_with_the_row_id(db: Any, feed: Feed) -> None:
    public, private = topic(), topic()
    async with await db.aconnect() as conn:
        async with conn.transaction():
            await conn.execute("select realtime.send('{\"text\": \"hi\"}', 'note', %s, false)", (public,))
            await conn.execute("select realtime.send('{\"text\": \"secret\", \"id\": \"mine\"}', 'note', %s)", (private,))
        rows = await (await conn.execute(
            "select topic, id::text from realtime.messages where topic = any(%s)", ([public, private],))).fetchall()
    ids = dict(rows)
    await feed.wait_for(lambda: bool(feed.on_topic(public) and feed.on_topic(private)), "both messages")
    [pub] = feed.on_topic(public)
    [priv] = feed.on_topic(private)
    assert (pub.id, pub.event, pub.private, pub.binary) == (ids[public], "note", False, False)
    assert json.loads(pub.data) == {"text": "hi", "id": ids[public]}  # id added to the payload
    assert (priv.id, priv.private, priv.binary) == (ids[private], True, False)
    assert json.loads(priv.data) == {"text": "secret", "id": "mine"}  # an existing id is kept


async def test_send_binary_arrives_as_raw_bytes(db: Any, feed: Feed) -> None:
    t = topic("bin")
    body = bytes(range(256)) + b"\\x00"
    async with await db.aconnect() as conn:
        await conn.execute("select realtime.send_binary(%s, 'blob', %s, false)", (body, t))
        [(row_id,)] = await (await conn.execute(
            "select id::text from realtime.messages where topic = %s", (t,))).fetchall()
    await feed.wait_for(lambda: bool(feed.on_topic(t)), "the binary message")
    [msg] = feed.on_topic(t)
    assert msg == DbMessage(id=row_id, sub_topic=t, event="blob", private=False, data=body, binary=True)


async def test_uncommitted_and_non_broadcast_rows_never_arrive(db: Any, feed: Feed) -> None:
    rolled_back, presence, no_event, marker = topic(), topic(), topic(), topic()
    authz = ChannelAuthorizer(db.dsn)
    async with await db.aconnect() as conn:
        async with conn.transaction(force_rollback=True):
            await conn.execute("select realtime.send('{\"a\": 1}', 'e', %s)", (rolled_back,))
        await conn.execute("insert into realtime.messages (topic, extension, event, payload, private)"
                           " values (%s, 'presence', 'e', '{}', true)", (presence,))
        await conn.execute("insert into realtime.messages (topic, extension, payload, private)"
                           " values (%s, 'broadcast', '{}', true)", (no_event,))
        await conn.execute("update realtime.messages set payload = '{\"b\": 2}' where topic = %s", (presence,))
        # Policy checks insert probe rows and roll them back (§7.3).
        svc = {"role": "service_role"}
        assert (await authz.can_read(rolled_back, svc, {}, ["broadcast", "presence"]))["broadcast"] is True
        assert await authz.can_write(rolled_back, svc, {}, "broadcast") is True
        await authz.close()
        await conn.execute("select realtime.send('{}', 'marker', %s, false)", (marker,))
    # Committed after everything above, so anything wrongly delivered would have come first.
    await feed.wait_for(lambda: bool(feed.on_topic(marker)), "the marker")
    assert [m.sub_topic for m in feed.messages] == [marker]


async def test_broadcast_changes_trigger_arrives_private(db: Any, feed: Feed) -> None:
    table = f"notes_{uuid.uuid4().hex[:8]}"
    t = f"{table}:7"
    async with await db.aconnect() as conn:
        await conn.execute(f"create table public.{table} (id int primary key, body text)")
        await conn.execute(
            f"create function public.{table}_bc() returns trigger language plpgsql as $$"
            f" begin perform realtime.broadcast_changes('{t}', TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA,"
            " NEW, OLD); return null; end $$")
        await conn.execute(f"create trigger bc after insert on public.{table}"
                           f" for each row execute function public.{table}_bc()")
        await conn.execute(f"insert into public.{table} values (7, 'hi')")
    await feed.wait_for(lambda: bool(feed.on_topic(t)), "the trigger's message")
    [msg] = feed.on_topic(t)
    assert (msg.event, msg.private, msg.binary) == ("INSERT", True, False)
    assert json.loads(msg.data) == {"id": msg.id, "old_record": None, "operation": "INSERT",
                                    "record": {"id": 7, "body": "hi"}, "schema": "public", "table": table}


async def test_messages_keep_commit_order(db: Any, feed: Feed) -> None:
    t = topic()
    async with await db.aconnect() as conn:
        for i in range(20):
            await conn.execute("select realtime.send(%s::jsonb, 'n', %s, false)", (json.dumps({"i": i}), t))
    await feed.wait_for(lambda: len(feed.on_topic(t)) == 20, "20 messages")
    assert [json.loads(m.data)["i"] for m in feed.on_topic(t)] == list(range(20))


async def test_feed_waits_for_migrations_then_streams(fresh_db: Any) -> None:
    slot = f"rc_msg_{uuid.uuid4().hex[:8]}"
    f = Feed(fresh_db.dsn, "pub_after_migrate", slot)
    await f.db.start()
    try:
        # No realtime.messages yet: down with a reason, retrying.
        await f.wait_for(lambda: f.db.state == "down" and f.db.detail is not None, "state down")
        assert "pub_after_migrate" in (f.db.detail or "")
        async with await fresh_db.aconnect() as conn:
            await migrate(conn)
        assert await f.db.wait_streaming(READY), f.states
        with fresh_db.connect() as conn:
            viaroot = conn.execute("select pubviaroot from pg_publication where pubname = 'pub_after_migrate'").fetchone()
        assert viaroot == (True,)
        t = topic()
        async with await fresh_db.aconnect() as conn:
            await conn.execute("select realtime.send('{}', 'e', %s)", (t,))
        await f.wait_for(lambda: bool(f.on_topic(t)), "a message after migrating")
    finally:
        await f.db.stop()
    assert f.db.state == "down" and f.db.detail == "stopped"
    assert ("streaming", None) in f.states


# --- pure parts ------------------------------------------------------------------------------


def test_decode_bytea_hex_and_escape_formats() -> None:
    assert decode_bytea(b"\\x00ff5c41") == b"\x00\xff\\A"
    assert decode_bytea(b"\\x") == b""
    assert decode_bytea(b"ab\\\\c\\000\\377") == b"ab\\c\x00\xff"
    with pytest.raises(ValueError):
        decode_bytea(b"bad\\9")
    with pytest.raises(ValueError):
        decode_bytea(b"\\xzz")


def _relation(*names: str) -> pgoutput.Relation:
    return pgoutput.Relation(relid=1, namespace="realtime", name="messages", replica_identity="d",
                             columns=tuple(pgoutput.Column(0, n, 25, -1) for n in names))


def test_message_from_row_rules() -> None:
    rel = _relation("topic", "extension", "payload", "event", "private", "id")  # no binary_payload column
    row = (b"room", b"broadcast", b'{"a": 1}', b"e", b"t", b"9c2d0000-0000-4000-8000-000000000000")
    assert message_from_row(rel, pgoutput.TupleData(row)) == DbMessage(
        id="9c2d0000-0000-4000-8000-000000000000", sub_topic="room", event="e", private=True,
        data=b'{"a": 1}', binary=False)
    for i in range(6):  # any required value missing (payload being the only body here)
        missing = row[:i] + (None,) + row[i + 1:]
        assert message_from_row(rel, pgoutput.TupleData(missing)) is None, i
    presence = (b"room", b"presence") + row[2:]
    assert message_from_row(rel, pgoutput.TupleData(presence)) is None
    # §4.9: a persisted client broadcast was sent live already
    rel = _relation("topic", "extension", "payload", "event", "private", "id", "skip_broadcast")
    assert message_from_row(rel, pgoutput.TupleData(row + (b"t",))) is None
    assert message_from_row(rel, pgoutput.TupleData(row + (b"f",))) is not None
    assert message_from_row(rel, pgoutput.TupleData(row + (None,))) is not None


async def test_persisted_rows_are_not_sent_again(db: Any, feed: Feed) -> None:
    t = topic()
    async with await db.aconnect() as conn:
        await conn.execute("insert into realtime.messages (topic, extension, event, payload, private, skip_broadcast)"
                           " values (%s, 'broadcast', 'persisted', '{}', true, true)", (t,))
        await conn.execute("select realtime.send('{}', 'after', %s)", (t,))  # committed later: the barrier
    await feed.wait_for(lambda: bool(feed.on_topic(t)), "the later message")
    assert [m.event for m in feed.on_topic(t)] == ["after"]


async def test_publication_and_slot_names_are_validated() -> None:
    with pytest.raises(ValueError):
        DatabaseBroadcasts("postgresql://x", slot="Bad-Slot", on_message=lambda m: None)
    with pytest.raises(ValueError):
        DatabaseBroadcasts("postgresql://x", publication="p; drop", on_message=lambda m: None)


