"""postgres_changes through the OFFICIAL clients (protocol.md §6, §9): supabase-js / realtime-js
2.119.1 over vsn 2.0.0 and 1.0.0 (via the Node peer, tests/js/peer.mjs) and the Python
``realtime`` 2.34.1 client, against a real PostgreSQL.

Negative assertions use a barrier: a later change on the same socket (changes arrive in commit
order, §6.9), after which anything wrongly delivered would already have been observed.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from support import make_token
from peers import (  # noqa: F401 - node is a fixture
    Event,
    NodePeer,
    PyClient,
    node,
    unique_topic,
)
from realtime.types import RealtimePostgresChangesListenEvent as PgEvent

SUBSCRIBED = "Subscribed to PostgreSQL"
#: The subscription is created asynchronously after the join reply (§6.3).
SUB_WAIT = 10.0
COMMIT_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
VSNS = ["2.0.0", "1.0.0"]


def binding(table: str, event: str = "*", **extra: Any) -> dict[str, Any]:
    return {"event": event, "schema": "public", "table": table, **extra}


def is_pg(ch: str) -> Any:
    return lambda e: e["type"] == "postgres_changes" and e["ch"] == ch


def is_system(ch: str) -> Any:
    return lambda e: e["type"] == "system" and e["ch"] == ch


async def wait_subscribed_js(node: NodePeer, ch: str, topic: str) -> None:
    event = await node.log.wait_for(is_system(ch), timeout=SUB_WAIT, what=f"the postgres system message on {ch}")
    assert event["payload"] == {
        "extension": "postgres_changes",
        "status": "ok",
        "message": SUBSCRIBED,
        "channel": topic,
    }


def js_change(p: Event) -> dict[str, Any]:
    """A realtime-js postgres_changes callback payload, with the commit timestamp checked and removed."""
    payload = dict(p["payload"])
    assert COMMIT_TS_RE.match(payload.pop("commit_timestamp")), p
    return payload


# --- supabase-js / realtime-js -----------------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(85, 88)
async def test_js_client_receives_insert_update_delete(cdc: Any, node: NodePeer, vsn: str) -> None:
    table = cdc.table("id int primary key, name text, n int8, meta jsonb, flag bool, tags text[]")
    all_topic, b_topic = unique_topic("pg-all"), unique_topic("pg-b")
    await node.add_client("a", cdc.server, vsn)
    await node.subscribe("a", "all", all_topic, postgres=[binding(table)])
    await node.subscribe("a", "b", b_topic, postgres=[binding(table, "INSERT", filter="name=eq.b")])
    await wait_subscribed_js(node, "all", all_topic)
    await wait_subscribed_js(node, "b", b_topic)

    cdc.execute(f"insert into {table} values (1, 'a', 5, '{{\"k\": [1, 2]}}', true, '{{x,y}}')")
    cdc.execute(f"update {table} set name = 'b' where id = 1")
    cdc.execute(f"insert into {table} values (2, 'b', null, null, false, '{{}}')")
    cdc.execute(f"delete from {table} where id = 1")
    events = await node.log.wait_count(is_pg("all"), 4, timeout=5, what="four changes")

    base = {"schema": "public", "table": table, "errors": None}
    row1 = {"id": 1, "name": "a", "n": 5, "meta": {"k": [1, 2]}, "flag": True, "tags": ["x", "y"]}
    assert [js_change(e) for e in events] == [
        {**base, "eventType": "INSERT", "new": row1, "old": {}},
        {**base, "eventType": "UPDATE", "new": {**row1, "name": "b"}, "old": {"id": 1}},
        {**base, "eventType": "INSERT", "new": {"id": 2, "name": "b", "n": None, "meta": None, "flag": False, "tags": []},
         "old": {}},
        {**base, "eventType": "DELETE", "new": {}, "old": {"id": 1}},
    ]  # fmt: skip
    # the filtered INSERT binding saw only row 2 (its channel shares the socket: barrier)
    b_events = node.log.matching(is_pg("b"))
    assert [(e["payload"]["eventType"], e["payload"]["new"]["id"]) for e in b_events] == [("INSERT", 2)]


@pytest.mark.compat(94, 95)
async def test_js_rls_two_users_each_see_only_their_rows(cdc: Any, node: NodePeer) -> None:
    table = cdc.table("id int primary key, owner uuid, body text", identity_full=True, rls=True)
    cdc.execute(f"create policy own on {table} for select to authenticated using (owner = auth.uid())")
    # Visibility is checked on a row's *current* state (§6.6), so the barrier deletes a row that
    # existed before the test's inserts rather than one of them.
    cdc.execute(f"insert into {table} values (0, %s, 'old')", (U1,))
    topic = unique_topic("notes")  # the same channel name for both users
    users = {"u1": U1, "u2": U2}
    for name, sub in users.items():
        await node.add_client(name, cdc.server, token=make_token("authenticated", sub=sub))
        await node.subscribe(name, f"{name}-ch", topic, postgres=[binding(table)])
    for name in users:
        await wait_subscribed_js(node, f"{name}-ch", topic)

    for ident, owner in [(1, U1), (2, U2), (3, U1), (4, U2)]:
        cdc.execute(f"insert into {table} values (%s, %s, %s)", (ident, owner, f"body {ident}"))
    cdc.execute(f"delete from {table} where id = 0")  # delivered to both (§6.6): the barrier

    def is_delete(e: Event) -> bool:
        return e["payload"]["eventType"] == "DELETE"

    seen: dict[str, list[tuple[str, Any]]] = {}
    for name in users:
        ch = f"{name}-ch"
        await node.log.wait_for(lambda e, ch=ch: is_pg(ch)(e) and is_delete(e), timeout=5, what=f"the DELETE on {ch}")
        events = node.log.matching(is_pg(ch))
        seen[name] = [(e["payload"]["eventType"], (e["payload"]["new"] or e["payload"]["old"])["id"]) for e in events]
        for e in events:
            if e["payload"]["eventType"] == "INSERT":
                assert e["payload"]["new"]["owner"] == users[name]
            else:  # 95: the DELETE's old record is reduced to the primary key on an RLS table
                assert e["payload"]["old"] == {"id": 0} and e["payload"]["new"] == {}
    assert seen == {
        "u1": [("INSERT", 1), ("INSERT", 3), ("DELETE", 0)],
        "u2": [("INSERT", 2), ("INSERT", 4), ("DELETE", 0)],
    }


# --- Python realtime 2.34.1 --------------------------------------------------------------------


@pytest.mark.compat(85, 87, 90)
async def test_python_client_receives_typed_insert(cdc: Any) -> None:
    table = cdc.table(
        "id int8 primary key, i int4, amount numeric, flag bool, meta jsonb, tags text[], at timestamptz,"
        " uid uuid, body text, nothing text"
    )
    topic = unique_topic("py")
    client = PyClient(cdc.server, "py")
    try:
        await client.subscribe("c", topic, postgres=[{"event": PgEvent.Insert, "table": table, "schema": "public"}])
        system = await client.log.wait_for(is_system("c"), timeout=SUB_WAIT, what="the postgres system message")
        assert {k: system["payload"].get(k) for k in ("extension", "status", "message", "channel")} == {
            "extension": "postgres_changes",
            "status": "ok",
            "message": SUBSCRIBED,
            "channel": topic,
        }
        cdc.execute(
            f"insert into {table} values (1, 42, 12.25, true, '{{\"a\": [1, null]}}', '{{x,\"y z\"}}',"
            " '2024-06-01 10:00:00.5+00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'héllo', null)"
        )
        cdc.execute(f"update {table} set i = 43 where id = 1")
        cdc.execute(f"insert into {table} (id) values (2)")  # barrier
        events = await client.log.wait_count(is_pg("c"), 2, timeout=5, what="two INSERTs")
        binding_id = client.channels["c"].postgres_changes_callbacks[0].id
    finally:
        await client.close()
    assert isinstance(binding_id, int) and binding_id != 0
    first = events[0]["payload"]
    assert first["ids"] == [binding_id]
    data = dict(first["data"])
    assert COMMIT_TS_RE.match(data.pop("commit_timestamp")), first
    assert data == {
        "schema": "public",
        "table": table,
        "type": "INSERT",
        "columns": [
            {"name": "id", "type": "int8"},
            {"name": "i", "type": "int4"},
            {"name": "amount", "type": "numeric"},
            {"name": "flag", "type": "bool"},
            {"name": "meta", "type": "jsonb"},
            {"name": "tags", "type": "_text"},
            {"name": "at", "type": "timestamptz"},
            {"name": "uid", "type": "uuid"},
            {"name": "body", "type": "text"},
            {"name": "nothing", "type": "text"},
        ],
        "record": {
            "id": 1,
            "i": 42,
            "amount": 12.25,
            "flag": True,
            "meta": {"a": [1, None]},
            "tags": ["x", "y z"],
            "at": "2024-06-01T10:00:00.5+00:00",
            "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "body": "héllo",
            "nothing": None,
        },
        "errors": None,
    }
    # the UPDATE in between never reached the INSERT binding; the barrier row did
    assert (events[1]["payload"]["data"]["type"], events[1]["payload"]["data"]["record"]["id"]) == ("INSERT", 2)
    assert len(client.log.matching(is_pg("c"))) == 2
