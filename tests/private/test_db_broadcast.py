"""Broadcast from the database, end to end (protocol.md §4.3, §4.5, §4.7; checklist 67, 68):
``realtime.send``, ``realtime.send_binary`` and a ``realtime.broadcast_changes`` trigger, run by
the user's own SQL, reach the subscribers of the right public or private stream with ``meta.id``.

Rows reach sockets in commit order (one replication stream), so a later row is the barrier
for "an earlier one was not delivered".
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from rawclient import V1, V2, VSNS, Frame, RawClient, event_is, open_client

#: a small payload limit (1 KB → 1,500 bytes, §4.5) so an oversized row is cheap to make
SERVER_ENV = {"REALTIME_MAX_PAYLOAD_SIZE_IN_KB": "1"}
READ, BROADCAST = "read", "broadcast"
PrivateDb = Any  # conftest.PrivateDb
WAIT = 10.0  # a committed row travels through logical replication


def new_user() -> str:
    return str(uuid.uuid4())


def private_topic(prefix: str = "room") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:10]}"


def row_id(pdb: PrivateDb, sub: str, event: str) -> str:
    rows = pdb.fetchall("select id::text from realtime.messages where topic = %s and event = %s", (sub, event))
    assert len(rows) == 1, rows
    return str(rows[0][0])


async def next_broadcast(c: RawClient, topic: str) -> Frame:
    return await c.expect(event_is("broadcast", topic), WAIT)


def assert_db_delivery(c: RawClient, frame: Frame, topic: str, event: str, data: Any, msg_id: str) -> None:
    """§4.3 "database (realtime.send)": V2 a kind-4 JSON frame with metadata {"id"}, V1 the object."""
    expected = {"event": event, "payload": data, "type": "broadcast", "meta": {"id": msg_id}}
    if c.vsn == V2:
        assert frame.is_binary and frame.kind == 4 and frame.encoding == 1, frame.raw
        assert frame.topic == topic and frame.user_event == event
        assert json.loads(frame.metadata) == {"id": msg_id}
        assert json.loads(frame.data) == data
    else:
        assert frame.value == c.wire(None, None, topic, "broadcast", expected)


async def join_member(pdb: PrivateDb, c: RawClient, sub: str) -> None:
    user = new_user()
    pdb.grant(user, sub, (BROADCAST, READ))
    await c.join_ok(f"realtime:{sub}", {"private": True}, access_token=pdb.token(user))


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(67, 68)
async def test_send_private_reaches_members_with_the_row_id(pdb: PrivateDb, vsn: str) -> None:
    sub = private_topic()
    topic = f"realtime:{sub}"
    async with open_client(pdb.server, vsn) as member, open_client(pdb.server, vsn) as public:
        await join_member(pdb, member, sub)
        await public.join_ok(topic, {})
        pdb.execute("select realtime.send(%s::jsonb, 'note', %s, true)", (json.dumps({"text": "hi"}), sub))
        msg_id = row_id(pdb, sub, "note")
        frame = await next_broadcast(member, topic)
        assert_db_delivery(member, frame, topic, "note", {"text": "hi", "id": msg_id}, msg_id)  # item 67

        # A payload with its own id keeps it; meta.id is still the row's.
        pdb.execute("select realtime.send('{\"id\": \"mine\"}'::jsonb, 'own', %s)", (sub,))  # private by default
        frame = await next_broadcast(member, topic)
        assert_db_delivery(member, frame, topic, "own", {"id": "mine"}, row_id(pdb, sub, "own"))

        # Item 68 the other way round: the public subscriber of the same sub-topic saw nothing
        # private; a public row (committed after both) is the first thing it gets.
        pdb.execute("select realtime.send('{}'::jsonb, 'open', %s, false)", (sub,))
        frame = await next_broadcast(public, topic)
        assert_db_delivery(public, frame, topic, "open", {"id": row_id(pdb, sub, "open")}, row_id(pdb, sub, "open"))


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(68)
async def test_send_public_does_not_reach_the_private_channel(pdb: PrivateDb, vsn: str) -> None:
    sub = private_topic()
    topic = f"realtime:{sub}"
    async with open_client(pdb.server, vsn) as member, open_client(pdb.server, vsn) as public:
        await join_member(pdb, member, sub)
        await public.join_ok(topic, {})
        pdb.execute("select realtime.send('{\"n\": 1}'::jsonb, 'pub', %s, false)", (sub,))
        pdb.execute("select realtime.send('{\"n\": 2}'::jsonb, 'priv', %s, true)", (sub,))
        first = await next_broadcast(member, topic)  # the public row, committed first, never came
        assert_db_delivery(member, first, topic, "priv", {"n": 2, "id": row_id(pdb, sub, "priv")},
                           row_id(pdb, sub, "priv"))
        frame = await next_broadcast(public, topic)
        assert_db_delivery(public, frame, topic, "pub", {"n": 1, "id": row_id(pdb, sub, "pub")},
                           row_id(pdb, sub, "pub"))


async def test_send_binary_reaches_v2_only(pdb: PrivateDb) -> None:
    sub = private_topic()
    topic = f"realtime:{sub}"
    body = bytes(range(256))
    async with open_client(pdb.server, V2) as v2, open_client(pdb.server, V1) as v1:
        await join_member(pdb, v2, sub)
        await join_member(pdb, v1, sub)
        pdb.execute("select realtime.send_binary(%s, 'blob', %s)", (body, sub))
        pdb.execute("select realtime.send('{}'::jsonb, 'after', %s)", (sub,))
        blob_id = row_id(pdb, sub, "blob")
        frame = await next_broadcast(v2, topic)
        assert frame.is_binary and frame.encoding == 0 and frame.user_event == "blob"
        assert frame.data == body and json.loads(frame.metadata) == {"id": blob_id}
        first = await next_broadcast(v1, topic)  # V1 cannot carry bytes: it gets the next row
        assert first.payload["event"] == "after"


@pytest.mark.parametrize("vsn", VSNS)
async def test_broadcast_changes_trigger_sends_row_images(pdb: PrivateDb, vsn: str) -> None:
    table = f"notes_{uuid.uuid4().hex[:8]}"
    room = uuid.uuid4().hex[:8]
    sub = f"{table}:{room}"
    topic = f"realtime:{sub}"
    pdb.execute(f"create table public.{table} (id int primary key, room text not null, body text)")
    pdb.execute(f"""
        create function public.{table}_broadcast() returns trigger language plpgsql as $$
        begin
            perform realtime.broadcast_changes(
                '{table}:' || coalesce(new.room, old.room), tg_op, tg_op,
                tg_table_name, tg_table_schema, new, old);
            return null;
        end $$;
        create trigger {table}_broadcast after insert or update or delete on public.{table}
            for each row execute function public.{table}_broadcast();
    """)
    async with open_client(pdb.server, vsn) as c:
        await join_member(pdb, c, sub)  # broadcast_changes sends privately (§4.7)
        pdb.execute(f"insert into public.{table} values (7, %s, 'hi')", (room,))
        pdb.execute(f"update public.{table} set body = 'there' where id = 7")
        pdb.execute(f"delete from public.{table} where id = 7")
        rows = pdb.fetchall("select id::text, event from realtime.messages where topic = %s order by inserted_at", (sub,))
        assert [r[1] for r in rows] == ["INSERT", "UPDATE", "DELETE"]
        new = {"id": 7, "room": room, "body": "hi"}
        updated = {**new, "body": "there"}
        images = {"INSERT": (None, new), "UPDATE": (new, updated), "DELETE": (updated, None)}
        for msg_id, op in rows:
            old, record = images[op]
            data = {"id": msg_id, "old_record": old, "operation": op, "record": record,
                    "schema": "public", "table": table}
            assert_db_delivery(c, await next_broadcast(c, topic), topic, op, data, msg_id)


async def test_oversized_and_rolled_back_rows_are_not_broadcast(pdb: PrivateDb) -> None:
    sub = private_topic()
    topic = f"realtime:{sub}"
    async with open_client(pdb.server, V2) as c:
        await c.join_ok(topic, {})
        pdb.execute("select realtime.send(%s::jsonb, 'big', %s, false)", (json.dumps({"x": "y" * 2000}), sub))
        with pdb.conn.transaction(force_rollback=True):
            pdb.execute("select realtime.send('{}'::jsonb, 'undone', %s, false)", (sub,))
        pdb.execute("select realtime.send('{}'::jsonb, 'small', %s, false)", (sub,))
        frame = await next_broadcast(c, topic)
        assert frame.user_event == "small"  # the 2 KB row was dropped (§4.5), the other never committed
