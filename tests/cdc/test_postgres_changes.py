"""postgres_changes against a real PostgreSQL, checked frame by frame (protocol.md §3.4, §3.9, §6;
checklist items 48, 85–100).

Every test makes its own tables (``cdc.table``) and topics, so changes never leak between tests.
Negative assertions ("X was not delivered") use a *barrier*: a later change, committed after X,
that the same socket must receive; changes reach a socket in commit order (§6.9), so had X been
delivered it would already be buffered when the barrier arrives.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from support import free_port, make_token
from rawclient import (
    V1,
    V2,
    VSNS,
    Frame,
    Pred,
    RawClient,
    event_is,
    open_client,
    reply_to,
    sub_topic,
    unique_topic,
)

SUBSCRIBED = "Subscribed to PostgreSQL"
#: The subscription is created asynchronously after the join reply (§6.3).
SUB_WAIT = 10.0
#: upper bound for a change to arrive (generous: the full suite shares 2 cores)
CHANGE_WAIT = 15.0
#: Our server retries transient subscription failures after 5 s (§6.3 allows 5–10 s).
RETRY_S = 5.0
DB_UNAVAILABLE = "Realtime was unable to connect to the project database"
NOT_IN_PUBLICATION = (
    "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the "
    "given connect parameters: "
)
DB_REJECTED = (
    "Unable to subscribe to changes with given parameters. An exception happened so please check your "
    "connect parameters: "
)
UNKNOWN_EVENT = (
    "Unable to subscribe to changes with given parameters. Unknown event {}: "
    'expected "INSERT", "UPDATE", "DELETE" or "*"'
)
COMMIT_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"

Payload = dict[str, Any]


# --- helpers -------------------------------------------------------------------------------


def binding(table: str, event: str = "*", **extra: Any) -> dict[str, Any]:
    return {"event": event, "schema": "public", "table": table, **extra}


def system_payload(topic: str, status: str, message: str) -> dict[str, Any]:
    return {"extension": "postgres_changes", "status": status, "message": message, "channel": sub_topic(topic)}


async def join_pg(c: RawClient, topic: str, bindings: list[dict[str, Any]], *, token: str | None = None) -> list[int]:
    """Join with ``bindings``; check the §3.4 echo and return the binding ids in order."""
    reply = await c.join(topic, {"postgres_changes": bindings}, access_token=token)
    assert reply.payload["status"] == "ok", reply.value
    echoed = reply.payload["response"]["postgres_changes"]
    assert [{k: v for k, v in e.items() if k != "id"} for e in echoed] == bindings
    ids = [e["id"] for e in echoed]
    for i in ids:
        assert type(i) is int and i != 0, echoed
    return ids


async def expect_system(c: RawClient, topic: str, timeout: float = SUB_WAIT) -> Frame:
    return await c.expect(event_is("system", topic), timeout)


async def subscribe(c: RawClient, topic: str, bindings: list[dict[str, Any]], *, token: str | None = None) -> list[int]:
    """Join and wait for ``Subscribed to PostgreSQL`` (checklist 85)."""
    ids = await join_pg(c, topic, bindings, token=token)
    frame = await expect_system(c, topic)
    assert frame.payload == system_payload(topic, "ok", SUBSCRIBED), frame.value
    return ids


async def subscribe_error(c: RawClient, topic: str, bindings: list[dict[str, Any]], *, token: str | None = None) -> str:
    """Join and return the message of the ``system`` error that must follow (§6.3)."""
    await join_pg(c, topic, bindings, token=token)
    frame = await expect_system(c, topic)
    payload = frame.payload
    assert {k: v for k, v in payload.items() if k != "message"} == {
        "extension": "postgres_changes",
        "status": "error",
        "channel": sub_topic(topic),
    }, frame.value
    assert isinstance(payload["message"], str)
    return payload["message"]


async def next_change(c: RawClient, topic: str, timeout: float = CHANGE_WAIT) -> Payload:
    frame = await c.expect(event_is("postgres_changes", topic), timeout)
    assert isinstance(frame.payload, dict) and set(frame.payload) == {"ids", "data"}, frame.value
    return frame.payload


async def changes_until(c: RawClient, topic: str, last: Callable[[Payload], bool]) -> list[Payload]:
    """All postgres_changes of ``topic`` up to and including the first one satisfying ``last``."""
    out: list[Payload] = []
    while True:
        p = await next_change(c, topic)
        out.append(p)
        if last(p):
            return out


def row_id(p: Payload, key: str = "id") -> Any:
    data = p["data"]
    return (data.get("record") or data.get("old_record") or {}).get(key)


def summary(p: Payload) -> tuple[str, Any, list[int]]:
    """(type, id of the row, sorted ids) — what a test about routing cares about."""
    return (p["data"]["type"], row_id(p), sorted(p["ids"]))


def is_row(kind: str, ident: Any) -> Callable[[Payload], bool]:
    return lambda p: p["data"]["type"] == kind and row_id(p) == ident


def change_of(topic: str, kind: str, ident: Any) -> Pred:
    """The postgres_changes frame of ``topic`` for one row (a marker committed after the action)."""
    row = is_row(kind, ident)
    return lambda f: f.event == "postgres_changes" and f.topic == topic and row(f.payload)


def cols(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"name": n, "type": t} for n, t in pairs]


def parse_commit_ts(text: str) -> datetime:
    assert COMMIT_TS_RE.match(text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def without(d: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


# --- 85, 87: subscription feedback and frame shapes ----------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(85, 87)
async def test_subscribed_message_and_change_frames_have_exact_shape(cdc: Any, vsn: str) -> None:
    table = cdc.table("id int primary key, body text")
    topic = unique_topic("pg")
    async with open_client(cdc.server, vsn) as c:
        [bid] = await join_pg(c, topic, [binding(table)])
        jr = c.join_refs[topic]
        frame = await expect_system(c, topic)
        # §3.7 / §1.5: a channel push carries the current join_ref and a null ref (V1: no join_ref)
        assert frame.value == c.wire(jr, None, topic, "system", system_payload(topic, "ok", SUBSCRIBED))
        cdc.execute(f"insert into {table} values (1, 'hi')")
        frame = await c.expect(event_is("postgres_changes", topic), CHANGE_WAIT)
        data = frame.payload["data"]
        # fan-out: both refs null (§1.5)
        assert frame.value == c.wire(None, None, topic, "postgres_changes", {"ids": [bid], "data": data})
        assert without(data, "commit_timestamp") == {
            "schema": "public",
            "table": table,
            "type": "INSERT",
            "columns": cols(("id", "int4"), ("body", "text")),
            "record": {"id": 1, "body": "hi"},
            "errors": None,
        }


@pytest.mark.compat(87)
async def test_insert_carries_typed_values_columns_and_commit_timestamp(cdc: Any) -> None:
    table = cdc.table(
        "id int8 primary key, i int4, s int2, big int8, amount numeric, scaled numeric(6,2), f float8,"
        " flag bool, meta jsonb, tags text[], nums int4[], at timestamptz, ts timestamp, d date,"
        " uid uuid, body text, nothing text"
    )
    topic = unique_topic("pg")
    async with open_client(cdc.server, V2) as c:
        [bid] = await subscribe(c, topic, [binding(table, "INSERT")])
        before = cdc.db_now()
        cdc.execute(
            f"insert into {table} values (7, 42, -3, 9007199254740993, 12345678901234567890.123456789, 1.5,"
            " 1.5, true, '{\"a\": 1, \"b\": [true, null], \"c\": \"x\"}',"
            " array['x', 'y z', 'q\"uote', null, 'NULL'], '{1,2,3}', '2024-06-01 10:00:00.12345+00',"
            " '2024-06-01 10:00:00', '2024-06-01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'héllo ✓', null)"
        )
        after = cdc.db_now()
        frame = await c.expect(event_is("postgres_changes", topic), CHANGE_WAIT)
    payload = frame.payload
    assert payload["ids"] == [bid]
    data = payload["data"]
    assert set(data) == {"schema", "table", "type", "commit_timestamp", "columns", "record", "errors"}
    assert "old_record" not in data
    assert (data["schema"], data["table"], data["type"], data["errors"]) == ("public", table, "INSERT", None)
    assert data["columns"] == cols(
        ("id", "int8"), ("i", "int4"), ("s", "int2"), ("big", "int8"), ("amount", "numeric"),
        ("scaled", "numeric"), ("f", "float8"), ("flag", "bool"), ("meta", "jsonb"), ("tags", "_text"),
        ("nums", "_int4"), ("at", "timestamptz"), ("ts", "timestamp"), ("d", "date"), ("uid", "uuid"),
        ("body", "text"), ("nothing", "text"),
    )  # fmt: skip
    record = data["record"]
    assert record == {
        "id": 7,
        "i": 42,
        "s": -3,
        "big": 9007199254740993,
        "amount": 12345678901234567890.123456789,
        "scaled": 1.5,
        "f": 1.5,
        "flag": True,
        "meta": {"a": 1, "b": [True, None], "c": "x"},
        "tags": ["x", "y z", 'q"uote', None, "NULL"],
        "nums": [1, 2, 3],
        "at": "2024-06-01T10:00:00.12345+00:00",
        "ts": "2024-06-01T10:00:00",
        "d": "2024-06-01",
        "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "body": "héllo ✓",
        "nothing": None,
    }
    # The same values PostgreSQL's own to_jsonb produces (§6.5).
    [(pg_json,)] = cdc.conn.execute(f"select to_jsonb(t) from {table} t").fetchall()
    assert record == pg_json
    # Exact JSON numbers: bigint beyond 2^53 and numeric digits/scale survive (no float rounding).
    exact = json.loads(frame.raw, parse_float=Decimal)[4]["data"]["record"]
    assert type(exact["big"]) is int and exact["big"] == 9007199254740993
    assert str(exact["amount"]) == "12345678901234567890.123456789"
    assert str(exact["scaled"]) == "1.50"
    # commit_timestamp: UTC, milliseconds, between the statement's start and its return
    ts = parse_commit_ts(data["commit_timestamp"])
    assert before - timedelta(milliseconds=1) <= ts <= after


# --- 88, 89: UPDATE / DELETE and replica identity ------------------------------------------


@pytest.mark.compat(88, 89)
async def test_update_and_delete_with_default_replica_identity(cdc: Any) -> None:
    table = cdc.table("id int primary key, name text, n int")
    columns = cols(("id", "int4"), ("name", "text"), ("n", "int4"))
    topic = unique_topic("pg")
    async with open_client(cdc.server, V2) as c:
        [bid] = await subscribe(c, topic, [binding(table)])
        cdc.execute(f"insert into {table} values (1, 'a', 1)")
        cdc.execute(f"update {table} set name = 'b' where id = 1")
        cdc.execute(f"update {table} set id = 2 where id = 1")  # key change: old key is sent
        cdc.execute(f"delete from {table} where id = 2")
        got = [await next_change(c, topic) for _ in range(4)]
    for p in got:
        assert p["ids"] == [bid]
        parse_commit_ts(p["data"].pop("commit_timestamp"))
    base = {"schema": "public", "table": table, "columns": columns, "errors": None}
    assert [p["data"] for p in got] == [
        {**base, "type": "INSERT", "record": {"id": 1, "name": "a", "n": 1}},
        {**base, "type": "UPDATE", "record": {"id": 1, "name": "b", "n": 1}, "old_record": {"id": 1}},
        {**base, "type": "UPDATE", "record": {"id": 2, "name": "b", "n": 1}, "old_record": {"id": 1}},
        {**base, "type": "DELETE", "old_record": {"id": 2}},
    ]


@pytest.mark.compat(88, 89)
async def test_replica_identity_full_sends_the_whole_previous_row(cdc: Any) -> None:
    table = cdc.table("id int primary key, name text, n int", identity_full=True)
    topic = unique_topic("pg")
    async with open_client(cdc.server, V1) as c:
        await subscribe(c, topic, [binding(table)])
        cdc.execute(f"insert into {table} values (1, 'a', 1)")
        cdc.execute(f"update {table} set name = 'b', n = 2 where id = 1")
        cdc.execute(f"delete from {table} where id = 1")
        got = [(await next_change(c, topic))["data"] for _ in range(3)]
    assert [(d["type"], d.get("record"), d.get("old_record")) for d in got] == [
        ("INSERT", {"id": 1, "name": "a", "n": 1}, None),
        ("UPDATE", {"id": 1, "name": "b", "n": 2}, {"id": 1, "name": "a", "n": 1}),
        ("DELETE", None, {"id": 1, "name": "b", "n": 2}),
    ]
    assert "old_record" not in got[0] and "record" not in got[2]


@pytest.mark.parametrize("identity_full", [False, True], ids=["default", "full"])
async def test_unchanged_toast_value_on_update(cdc: Any, identity_full: bool) -> None:
    """§6.7: an unchanged TOASTed value is absent from an UPDATE's record unless the full old
    row is available (REPLICA IDENTITY FULL), which fills it in."""
    table = cdc.table("id int primary key, n int, big text", identity_full=identity_full)
    big = "".join(uuid.uuid4().hex for _ in range(600))  # ~19 KB, barely compressible: stored out of line
    topic = unique_topic("pg")
    async with open_client(cdc.server, V2) as c:
        await subscribe(c, topic, [binding(table, "UPDATE")])
        cdc.execute(f"insert into {table} values (1, 1, %s)", (big,))
        cdc.execute(f"update {table} set n = 2 where id = 1")
        data = (await next_change(c, topic))["data"]
    if identity_full:
        assert data["record"] == {"id": 1, "n": 2, "big": big}
        assert data["old_record"] == {"id": 1, "n": 1, "big": big}
    else:
        assert data["record"] == {"id": 1, "n": 2}
        assert data["old_record"] == {"id": 1}


async def test_changes_of_one_transaction_arrive_in_order_with_one_commit_timestamp(cdc: Any) -> None:
    table = cdc.table("id int primary key, name text")
    topic = unique_topic("pg")
    async with open_client(cdc.server, V2) as c:
        await subscribe(c, topic, [binding(table)])
        with cdc.conn.transaction():
            cdc.execute(f"insert into {table} values (1, 'a')")
            cdc.execute(f"update {table} set name = 'b' where id = 1")
            cdc.execute(f"insert into {table} values (2, 'c')")
            cdc.execute(f"delete from {table} where id = 1")
        got = [await next_change(c, topic) for _ in range(4)]
    assert [(p["data"]["type"], row_id(p)) for p in got] == [("INSERT", 1), ("UPDATE", 1), ("INSERT", 2), ("DELETE", 1)]
    assert len({p["data"]["commit_timestamp"] for p in got}) == 1


# --- 90, 97: event bindings and several bindings per channel -------------------------------


@pytest.mark.compat(90)
async def test_insert_binding_gets_no_update_or_delete(cdc: Any) -> None:
    table = cdc.table("id int primary key, name text")
    topic = unique_topic("pg")
    async with open_client(cdc.server, V2) as c:
        # event is case-insensitive (§6.1) and echoed exactly as sent (§3.4)
        [bid] = await subscribe(c, topic, [binding(table, "insert")])
        cdc.execute(f"insert into {table} values (1, 'a')")
        cdc.execute(f"update {table} set name = 'b' where id = 1")
        cdc.execute(f"delete from {table} where id = 1")
        cdc.execute(f"insert into {table} values (2, 'barrier')")
        got = await changes_until(c, topic, is_row("INSERT", 2))
    assert [summary(p) for p in got] == [("INSERT", 1, [bid]), ("INSERT", 2, [bid])]


@pytest.mark.compat(97)
async def test_two_matching_bindings_give_one_message_with_both_ids(cdc: Any) -> None:
    table = cdc.table("id int primary key, name text")
    topic = unique_topic("pg")
    bindings = [binding(table), binding(table, "INSERT"), binding(table, "UPDATE", filter="id=eq.2")]
    async with open_client(cdc.server, V2) as c:
        all_, ins, upd2 = await subscribe(c, topic, bindings)
        assert len({all_, ins, upd2}) == 3
        cdc.execute(f"insert into {table} values (1, 'a')")
        cdc.execute(f"insert into {table} values (2, 'b')")
        cdc.execute(f"update {table} set name = 'c' where id = 2")
        cdc.execute(f"update {table} set name = 'd' where id = 1")
        cdc.execute(f"delete from {table} where id = 1")
        got = await changes_until(c, topic, is_row("DELETE", 1))
    assert [summary(p) for p in got] == [
        ("INSERT", 1, sorted([all_, ins])),
        ("INSERT", 2, sorted([all_, ins])),
        ("UPDATE", 2, sorted([all_, upd2])),
        ("UPDATE", 1, [all_]),
        ("DELETE", 1, [all_]),
    ]


async def test_identical_bindings_on_two_channels_have_the_same_id(cdc: Any) -> None:
    table = cdc.table("id int primary key")
    t1, t2 = unique_topic("pg"), unique_topic("pg")
    async with open_client(cdc.server, V2) as c:
        [a] = await subscribe(c, t1, [binding(table, filter="id=gt.0")])
        [b] = await subscribe(c, t2, [binding(table, filter="id=gt.0")])
        assert a == b  # §3.4: a deterministic function of the parameters
        cdc.execute(f"insert into {table} values (1)")
        assert (await next_change(c, t1))["ids"] == [a]
        assert (await next_change(c, t2))["ids"] == [b]


@pytest.mark.compat(97)
async def test_schema_wide_binding_covers_every_published_table_of_the_schema(cdc: Any) -> None:
    schema = f"wild_{uuid.uuid4().hex[:6]}"
    cdc.execute(f"create schema {schema}")
    cdc.execute(f"grant usage on schema {schema} to anon, authenticated, service_role")
    t1 = cdc.table("id int primary key", schema=schema)
    t2 = cdc.table("id int primary key", schema=schema)
    topic = unique_topic("pg")
    bindings = [{"event": "*", "schema": schema}, {"event": "INSERT", "schema": schema, "table": t1}]
    async with open_client(cdc.server, V2) as c:
        wide, one = await subscribe(c, topic, bindings)
        cdc.execute(f"insert into {schema}.{t1} values (1)")
        cdc.execute(f"insert into {schema}.{t2} values (2)")
        cdc.execute(f"delete from {schema}.{t1} where id = 1")
        got = await changes_until(c, topic, is_row("DELETE", 1))
    assert [(p["data"]["schema"], p["data"]["table"], *summary(p)) for p in got] == [
        (schema, t1, "INSERT", 1, sorted([wide, one])),
        (schema, t2, "INSERT", 2, [wide]),
        (schema, t1, "DELETE", 1, [wide]),
    ]


# --- 91, 92: filters ---------------------------------------------------------------------


@pytest.mark.compat(91, 92)
async def test_filter_matrix_eq_in_and_list_not(cdc: Any) -> None:
    table = cdc.table("id int primary key, status text, a int")
    topic = unique_topic("pg")
    filters = {"eq": "id=eq.5", "in": "status=in.(a,b)", "and": "a=gt.1,a=lt.9", "not": "status=not.eq.draft"}
    async with open_client(cdc.server, V2) as c:
        ids = dict(zip(filters, await subscribe(c, topic, [binding(table, filter=f) for f in filters.values()]), strict=True))
        rows = [
            (5, "draft", 0),  # eq
            (6, "a", 0),  # in, not
            (7, "c", 5),  # and, not
            (8, "draft", 5),  # and
            (9, "b", 9),  # in, not (a=9 fails a<9)
            (10, "draft", 1),  # nothing (a=1 fails a>1)
            (11, "draft", 20),  # nothing
            (12, None, None),  # nothing: NULL never matches (§6.2)
        ]
        for row in rows:
            cdc.execute(f"insert into {table} values (%s, %s, %s)", row)
        cdc.execute(f"update {table} set status = 'a' where id = 5")  # eq, in, not
        cdc.execute(f"insert into {table} values (13, 'c', 3)")  # barrier: and, not
        got = await changes_until(c, topic, is_row("INSERT", 13))

    def want(*names: str) -> list[int]:
        return sorted(ids[n] for n in names)

    assert [summary(p) for p in got] == [
        ("INSERT", 5, want("eq")),
        ("INSERT", 6, want("in", "not")),
        ("INSERT", 7, want("and", "not")),
        ("INSERT", 8, want("and")),
        ("INSERT", 9, want("in", "not")),
        ("UPDATE", 5, want("eq", "in", "not")),
        ("INSERT", 13, want("and", "not")),
    ]


@pytest.mark.compat(91)
async def test_filter_operators_over_column_types(cdc: Any) -> None:
    """The §6.2 operator set against text, numeric, timestamptz, bool and uuid columns."""
    table = cdc.table("id int primary key, title text, price numeric, at timestamptz, flag bool, uid uuid, note text")
    u, v = str(uuid.uuid4()), str(uuid.uuid4())
    filters = {
        "like": "title=like.ab%",
        "ilike": "title=ilike.AB%",
        "match": "title=match.^a.c$",
        "isnull": "note=is.null",
        "istrue": "flag=is.true",
        "range": "price=gte.10.5,price=lte.20",
        "after": "at=gt.2024-01-01T00:00:00Z",
        "uid": f"uid=eq.{u}",
        "quoted": 'title=eq."x,y"',
        "in": "id=in.(2,4)",
        "distinct": "note=isdistinct.hello",
        "neq": "price=neq.15",
    }
    rows = [
        (1, "abc", "15", "2023-06-01 00:00:00Z", True, u, None),
        (2, "ABx", "10.4", "2024-06-01 00:00:00Z", False, v, "hello"),
        (3, "x,y", "20", None, None, None, "bye"),
        (4, "axcz", "20.01", "2024-01-01 00:00:00Z", True, u, "hello"),
        (6, "zzz", None, "2020-01-01 00:00:00Z", False, v, "hello"),  # matches nothing
        (5, "abc", None, None, None, None, None),  # barrier
    ]
    expected = {
        1: ["like", "ilike", "match", "isnull", "istrue", "range", "uid", "distinct"],
        2: ["ilike", "after", "in", "neq"],
        3: ["range", "quoted", "distinct", "neq"],
        4: ["istrue", "uid", "in", "neq"],
        5: ["like", "ilike", "match", "isnull", "distinct"],
    }
    topic = unique_topic("pg")
    async with open_client(cdc.server, V2) as c:
        bids = await subscribe(c, topic, [binding(table, "INSERT", filter=f) for f in filters.values()])
        ids = dict(zip(filters, bids, strict=True))
        for row in rows:
            cdc.execute(f"insert into {table} values (%s, %s, %s::numeric, %s::timestamptz, %s, %s::uuid, %s)", row)
        got = await changes_until(c, topic, is_row("INSERT", 5))
    names = {i: n for n, i in ids.items()}
    assert [(row_id(p), sorted(names[i] for i in p["ids"])) for p in got] == [
        (k, sorted(v)) for k, v in expected.items()
    ]


async def test_delete_filter_sees_only_identity_columns(cdc: Any) -> None:
    """§6.2: a DELETE is matched on the old identity, so a filter on a non-key column matches
    deletes only with REPLICA IDENTITY FULL."""
    plain = cdc.table("id int primary key, status text")
    full = cdc.table("id int primary key, status text", identity_full=True)
    topic = unique_topic("pg")
    async with open_client(cdc.server, V2) as c:
        _, full_status, plain_id = await subscribe(
            c,
            topic,
            [
                binding(plain, "DELETE", filter="status=eq.x"),
                binding(full, "DELETE", filter="status=eq.x"),
                binding(plain, "DELETE", filter="id=eq.1"),
            ],
        )
        for t in (plain, full):
            cdc.execute(f"insert into {t} values (1, 'x')")
        cdc.execute(f"delete from {plain} where id = 1")
        cdc.execute(f"delete from {full} where id = 1")
        first = await next_change(c, topic)
        second = await next_change(c, topic)
    assert (first["ids"], first["data"]["table"], first["data"]["old_record"]) == ([plain_id], plain, {"id": 1})
    assert (second["ids"], second["data"]["table"], second["data"]["old_record"]) == (
        [full_status],
        full,
        {"id": 1, "status": "x"},
    )


# --- 86, 93 and other subscription errors: reported once, never retried -------------------


@pytest.mark.compat(86, 93)
async def test_invalid_bindings_get_one_system_error_each_and_no_retry(cdc: Any) -> None:
    table = cdc.table("id int primary key, subject text")
    unpublished = cdc.table("id int primary key", publish=False)
    cases: list[tuple[list[dict[str, Any]], str | None, Callable[[str], bool]]] = [
        # 86: table not in the publication
        ([binding(unpublished, "INSERT")], None, lambda m: m.startswith(NOT_IN_PUBLICATION)),
        ([binding("no_such_table")], None, lambda m: m.startswith(NOT_IN_PUBLICATION)),
        # 93: malformed filter
        ([binding(table, filter="subject=foo.hey")], None, lambda m: m == 'Error parsing `filter` params: ["foo", "hey"]'),
        (
            [binding(table, filter="id=eq.1,,subject=eq.a")],
            None,
            lambda m: m == "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)",
        ),
        (
            [binding(table, filter="id=in.1,2")],
            None,
            lambda m: m == "Error parsing `filter` params: `in` filter value must be wrapped by parentheses",
        ),
        # rejected by the database side: unknown column, bad cast, unknown role
        (
            [binding(table, filter="nope=eq.1")],
            None,
            lambda m: m.startswith(DB_REJECTED) and m.endswith("invalid column for filter nope"),
        ),
        (
            [binding(table, filter="id=eq.abc")],
            None,
            lambda m: m.startswith(DB_REJECTED) and 'invalid input syntax for type integer: "abc"' in m,
        ),
        (
            [binding(table, select=["nope"])],
            None,
            lambda m: m.startswith(DB_REJECTED) and m.endswith("invalid column for select nope"),
        ),
        (
            [binding(table)],
            make_token("rc_no_such_role"),
            lambda m: m.startswith(DB_REJECTED) and "rc_no_such_role" in m and "does not exist" in m,
        ),
        # §6.1 parameter errors
        (
            [{"event": "*"}],
            None,
            lambda m: m.startswith(
                "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: "
            ),
        ),
        (
            [{"event": "*", "schema": "public", "select": ["id"]}],
            None,
            lambda m: m == "Column selection is not supported for wildcard subscriptions. "
            "Provide an explicit schema and table name.",
        ),
        (
            [binding(table, select="id")],
            None,
            lambda m: m == 'Error parsing `select` params: expected a list of column name strings, e.g. select: ["col1", "col2"]',
        ),
        # an unknown event name is refused (the reference would read it as "*")
        (
            [binding(table, "INSERTS")],
            None,
            lambda m: m == UNKNOWN_EVENT.format("'INSERTS'"),
        ),
        ([binding(table, 7)], None, lambda m: m == UNKNOWN_EVENT.format("'7'")),
    ]
    async with open_client(cdc.server, V2) as c:
        topics = []
        for bindings, token, check in cases:
            topic = unique_topic("bad")
            topics.append(topic)
            message = await subscribe_error(c, topic, bindings, token=token)
            assert check(message), (bindings, message)
            # the server logs each failure at warning with its reason before it answers
            line = f"WARNING realtime_channels.cdc.subscriptions: postgres_changes: subscription of {topic} failed: {message}"
            assert line in cdc.server.log(), (line, cdc.server.log()[-2000:])
        # No retry and no late success: nothing more for any of these channels (§6.3). The
        # marker is a retry that must happen: a control channel whose check finds the database
        # unreachable (its connection cut, new connections refused) gets the transient error,
        # then its retry's success RETRY_S later. Retries of the channels above would have been
        # due earlier and queued first.
        control = unique_topic("control")
        role = f"rc_ctl_{uuid.uuid4().hex[:8]}"  # unknown to the server: its check must ask the database
        cdc.execute(f"create role {role}")
        cdc.execute(f"grant select on {table} to {role}")
        admin = psycopg.connect(cdc.dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True)
        admin.execute(f'alter database "{cdc.dbname}" allow_connections false')
        try:
            cdc.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database()"
                " and backend_type = 'client backend' and pid <> pg_backend_pid() and application_name = ''"
            )
            assert await subscribe_error(c, control, [binding(table)], token=make_token(role)) == DB_UNAVAILABLE
        finally:
            admin.execute(f'alter database "{cdc.dbname}" allow_connections true')
            admin.close()
        subscribed = await c.assert_nothing_before(
            lambda f: f.event == "system" and f.topic == control, lambda f: f.topic in topics, RETRY_S + SUB_WAIT
        )
        assert subscribed.payload == system_payload(control, "ok", SUBSCRIBED)
        # And none of them was subscribed: a row the control channel receives reaches none of them.
        cdc.execute(f"insert into {table} values (1, 'a')")
        await next_change(c, control)
        await c.assert_nothing_pending(lambda f: f.topic in topics)


async def test_event_names_are_case_insensitive_and_star_or_absent_means_every_event(cdc: Any) -> None:
    table = cdc.table("id int primary key")
    bindings = [binding(table, "insert"), {"schema": "public", "table": table}, binding(table, "Delete")]
    async with open_client(cdc.server, V2) as c:
        topic = unique_topic("events")
        ids = await subscribe(c, topic, bindings)
        cdc.execute(f"insert into {table} values (1)")
        cdc.execute(f"delete from {table}")
        assert summary(await next_change(c, topic)) == ("INSERT", 1, sorted(ids[:2]))
        assert summary(await next_change(c, topic)) == ("DELETE", 1, sorted(ids[1:]))


# --- 94, 95: Row Level Security --------------------------------------------------------------


@pytest.mark.compat(94, 95)
async def test_rls_each_user_sees_only_own_rows_and_deletes_are_reduced_to_the_key(cdc: Any) -> None:
    table = cdc.table("id int primary key, owner uuid, body text", identity_full=True, rls=True)
    cdc.execute(f"create policy own on {table} for select to authenticated using (owner = auth.uid())")
    tokens = {
        "u1": make_token("authenticated", sub=U1),
        "u2": make_token("authenticated", sub=U2),
        "anon": make_token("anon"),
        "svc": make_token("service_role"),
    }
    topics = {who: unique_topic(f"rls-{who}") for who in tokens}
    async with open_client(cdc.server, V2) as c:
        for who, token in tokens.items():
            await subscribe(c, topics[who], [binding(table)], token=token)
        writes = [
            (f"insert into {table} values (1, '{U1}', 'a')", ("INSERT", 1)),
            (f"insert into {table} values (2, '{U2}', 'b')", ("INSERT", 2)),
            (f"insert into {table} values (3, '{U1}', 'c')", ("INSERT", 3)),
            (f"update {table} set owner = '{U1}' where id = 2", ("UPDATE", 2)),
            (f"update {table} set owner = '{U2}', body = 'd' where id = 3", ("UPDATE", 3)),
            (f"delete from {table} where id = 1", ("DELETE", 1)),
        ]
        got: dict[str, list[Payload]] = {who: [] for who in tokens}
        for sql, (kind, ident) in writes:
            cdc.execute(sql)
            # RLS is judged on each change's own image (§6.6); service_role (BYPASSRLS) sees
            # every change.
            p = await next_change(c, topics["svc"])
            assert (p["data"]["type"], row_id(p)) == (kind, ident)
            got["svc"].append(p)
        for who in ("u1", "u2", "anon"):
            # the DELETE goes to everyone (§6.6) and is the barrier
            got[who] = await changes_until(c, topics[who], is_row("DELETE", 1))
        await c.assert_nothing_pending(event_is("postgres_changes"))

    def seen(who: str) -> list[tuple[str, Any]]:
        return [(p["data"]["type"], row_id(p)) for p in got[who]]

    assert seen("u1") == [("INSERT", 1), ("INSERT", 3), ("UPDATE", 2), ("DELETE", 1)]
    assert seen("u2") == [("INSERT", 2), ("UPDATE", 3), ("DELETE", 1)]
    assert seen("anon") == [("DELETE", 1)]
    assert seen("svc") == [("INSERT", 1), ("INSERT", 2), ("INSERT", 3), ("UPDATE", 2), ("UPDATE", 3), ("DELETE", 1)]
    # 95: DELETE on an RLS table: old_record reduced to the primary key, even with identity FULL
    for who in tokens:
        assert got[who][-1]["data"]["old_record"] == {"id": 1}
        assert "record" not in got[who][-1]["data"]
    # An UPDATE's old image is u2's row: u1 gets only its key; service_role gets it whole
    u1_update = got["u1"][2]["data"]
    assert u1_update["record"] == {"id": 2, "owner": U1, "body": "b"}
    assert u1_update["old_record"] == {"id": 2}
    assert got["svc"][3]["data"]["old_record"] == {"id": 2, "owner": U2, "body": "b"}


@pytest.mark.compat(94)
async def test_rls_policy_on_jwt_claims(cdc: Any) -> None:
    """Policies see the subscriber's whole claims through auth.jwt() (§6.6)."""
    table = cdc.table("id int primary key, team text", rls=True)
    cdc.execute(f"create policy team on {table} for select to authenticated using (team = auth.jwt() ->> 'team')")
    red, blue = unique_topic("red"), unique_topic("blue")
    async with open_client(cdc.server, V2) as c:
        await subscribe(c, red, [binding(table, "INSERT")], token=make_token("authenticated", sub=U1, team="red"))
        await subscribe(c, blue, [binding(table, "INSERT")], token=make_token("authenticated", sub=U2, team="blue"))
        for i, team in enumerate(["red", "blue", "red", "green", "blue"], start=1):
            cdc.execute(f"insert into {table} values (%s, %s)", (i, team))
        red_got = await changes_until(c, red, is_row("INSERT", 3))
        blue_got = await changes_until(c, blue, is_row("INSERT", 5))
        # Marker rows committed last: each team's is its next change, nothing of the others before.
        cdc.execute(f"insert into {table} values (6, 'red'), (7, 'blue')")
        for topic, marker in ((red, 6), (blue, 7)):
            await c.assert_nothing_before(
                change_of(topic, "INSERT", marker), event_is("postgres_changes", topic), CHANGE_WAIT
            )
    assert [row_id(p) for p in red_got] == [1, 3]
    assert [row_id(p) for p in blue_got] == [2, 5]


# --- 96, 98: column privileges and select ----------------------------------------------------


@pytest.mark.compat(96)
async def test_column_privileges_trim_record_old_record_and_columns(cdc: Any) -> None:
    table = cdc.table("id int primary key, name text, secret text", identity_full=True)
    cdc.execute(f"revoke select on {table} from anon")
    cdc.execute(f"grant select (id, name) on {table} to anon")
    cdc.execute(f"revoke select on {table} from authenticated")
    cdc.execute(f"grant select (name, secret) on {table} to authenticated")  # not the key
    anon_t, svc_t, auth_t = unique_topic("anon"), unique_topic("svc"), unique_topic("auth")
    async with open_client(cdc.server, V2) as c:
        await subscribe(c, anon_t, [binding(table)])
        await subscribe(c, svc_t, [binding(table)], token=make_token("service_role"))
        await subscribe(c, auth_t, [binding(table)], token=make_token("authenticated", sub=U1))
        # a revoked column cannot be filtered on or selected (§6.2, §6.8)
        msg = await subscribe_error(c, unique_topic("f"), [binding(table, filter="secret=eq.s")])
        assert msg.startswith(DB_REJECTED) and msg.endswith("invalid column for filter secret"), msg
        msg = await subscribe_error(c, unique_topic("s"), [binding(table, select=["secret"])])
        assert msg.startswith(DB_REJECTED) and msg.endswith("invalid column for select secret"), msg
        cdc.execute(f"insert into {table} values (1, 'n', 's')")
        cdc.execute(f"update {table} set name = 'n2', secret = 's2' where id = 1")
        cdc.execute(f"delete from {table} where id = 1")
        anon = [(await next_change(c, anon_t))["data"] for _ in range(3)]
        svc = [(await next_change(c, svc_t))["data"] for _ in range(3)]
        auth = [(await next_change(c, auth_t))["data"] for _ in range(3)]
    assert all(d["columns"] == cols(("id", "int4"), ("name", "text")) for d in anon)
    assert [(d.get("record"), d.get("old_record")) for d in anon] == [
        ({"id": 1, "name": "n"}, None),
        ({"id": 1, "name": "n2"}, {"id": 1, "name": "n"}),
        (None, {"id": 1, "name": "n2"}),
    ]
    assert "secret" not in json.dumps(anon)
    # the same changes with full privileges carry the column
    assert all(d["columns"] == cols(("id", "int4"), ("name", "text"), ("secret", "text")) for d in svc)
    assert [(d.get("record"), d.get("old_record")) for d in svc] == [
        ({"id": 1, "name": "n", "secret": "s"}, None),
        ({"id": 1, "name": "n2", "secret": "s2"}, {"id": 1, "name": "n", "secret": "s"}),
        (None, {"id": 1, "name": "n2", "secret": "s2"}),
    ]
    # a role that cannot SELECT the primary key gets "Error 401: Unauthorized" instead of data (§6.7)
    unauthorized = {"schema": "public", "table": table, "commit_timestamp": None, "columns": [],
                    "errors": ["Error 401: Unauthorized"]}  # fmt: skip
    assert auth[0] == {**unauthorized, "type": "INSERT", "record": {}}
    assert auth[1] == {**unauthorized, "type": "UPDATE", "record": {}, "old_record": {}}
    assert auth[2]["type"] == "DELETE" and auth[2]["errors"] == ["Error 401: Unauthorized"]
    assert "s2" not in json.dumps(auth[2])


@pytest.mark.compat(98)
async def test_select_restricts_to_listed_columns_plus_primary_key(cdc: Any) -> None:
    table = cdc.table("id int primary key, name text, secret text, n int", identity_full=True)
    topic = unique_topic("pg")
    async with open_client(cdc.server, V2) as c:
        [bid] = await subscribe(c, topic, [binding(table, select=["name"])])
        cdc.execute(f"insert into {table} values (1, 'a', 's', 1)")
        cdc.execute(f"update {table} set name = 'b', n = 2 where id = 1")
        cdc.execute(f"delete from {table} where id = 1")
        got = [await next_change(c, topic) for _ in range(3)]
    assert all(p["ids"] == [bid] for p in got)
    assert all(p["data"]["columns"] == cols(("id", "int4"), ("name", "text")) for p in got)
    assert [(p["data"].get("record"), p["data"].get("old_record")) for p in got] == [
        ({"id": 1, "name": "a"}, None),
        ({"id": 1, "name": "b"}, {"id": 1, "name": "a"}),
        (None, {"id": 1, "name": "b"}),
    ]


# --- 99: no primary key ----------------------------------------------------------------------


@pytest.mark.compat(99)
async def test_table_without_primary_key_reports_error_400(cdc: Any) -> None:
    table = cdc.table("a int, b text", identity_full=True)  # FULL: updates need a replica identity
    topic = unique_topic("pg")
    async with open_client(cdc.server, V2) as c:
        [bid] = await subscribe(c, topic, [binding(table, filter="a=eq.1")])
        cdc.execute(f"insert into {table} values (1, 'x')")
        cdc.execute(f"update {table} set b = 'y' where a = 1")
        got = [await next_change(c, topic) for _ in range(2)]
    error = {"schema": "public", "table": table, "commit_timestamp": None, "columns": [],
             "errors": ["Error 400: Bad Request, no primary key"]}  # fmt: skip
    assert got[0] == {"ids": [bid], "data": {**error, "type": "INSERT", "record": {}}}
    assert got[1] == {"ids": [bid], "data": {**error, "type": "UPDATE", "record": {}, "old_record": {}}}


# --- 100: leave ------------------------------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(100)
async def test_leave_stops_delivery(cdc: Any, vsn: str) -> None:
    table = cdc.table("id int primary key")
    gone, stays = unique_topic("gone"), unique_topic("stays")
    async with open_client(cdc.server, vsn) as c:
        await subscribe(c, gone, [binding(table)])
        await subscribe(c, stays, [binding(table)])
        cdc.execute(f"insert into {table} values (1)")
        assert row_id(await next_change(c, gone)) == 1
        assert row_id(await next_change(c, stays)) == 1
        ref = await c.push(gone, "phx_leave", {})
        reply = await c.expect(reply_to(ref, gone))
        assert reply.payload == {"status": "ok", "response": {}}
        await c.expect(event_is("phx_close", gone))
        cdc.execute(f"insert into {table} values (2)")
        cdc.execute(f"insert into {table} values (3)")
        assert [row_id(await next_change(c, stays)) for _ in range(2)] == [2, 3]
        # Both changes have been routed; whatever they sent to this socket is in by the barrier.
        await c.assert_nothing_pending(lambda f: f.topic == gone)


# --- 48: access_token refresh re-subscribes with the new claims -----------------------------


@pytest.mark.compat(48)
async def test_access_token_refresh_resubscribes_with_new_claims(cdc: Any) -> None:
    table = cdc.table("id int primary key, owner uuid", rls=True)
    cdc.execute(f"create policy own on {table} for select to authenticated using (owner = auth.uid())")
    topic = unique_topic("refresh")
    async with open_client(cdc.server, V2) as c:
        await subscribe(c, topic, [binding(table, "INSERT")], token=make_token("authenticated", sub=U1))
        cdc.execute(f"insert into {table} values (1, '{U1}')")
        assert row_id(await next_change(c, topic)) == 1
        await c.push(topic, "access_token", {"access_token": make_token("authenticated", sub=U2, exp_in=7200)})
        frame = await expect_system(c, topic)
        assert frame.value == c.wire(c.join_refs[topic], None, topic, "system", system_payload(topic, "ok", SUBSCRIBED))
        cdc.execute(f"insert into {table} values (2, '{U1}')")  # the old user's row: no longer visible
        cdc.execute(f"insert into {table} values (3, '{U2}')")
        assert row_id(await next_change(c, topic)) == 3
        # A marker row committed last comes with nothing before it (no second copy of row 3).
        cdc.execute(f"insert into {table} values (4, '{U2}')")
        await c.assert_nothing_before(change_of(topic, "INSERT", 4), lambda f: f.topic == topic, CHANGE_WAIT)


# --- faults ------------------------------------------------------------------------------------


async def test_database_down_gives_system_error_and_broadcast_keeps_working(server_factory: Any) -> None:
    port = free_port()  # nobody listens here
    srv = server_factory(
        REALTIME_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=2",
        REALTIME_PUBLICATION="rc_pub_down",
        REALTIME_SLOT_NAME="rc_slot_down",
    )
    topic = unique_topic("down")
    async with open_client(srv, V2) as c:
        jr = await c.join_ok(topic, {"broadcast": {"self": True, "ack": True}, "postgres_changes": [binding("todos")]})
        frame = await expect_system(c, topic)
        payload = frame.payload
        assert frame.value == c.wire(jr, None, topic, "system", payload)
        assert without(payload, "message") == without(system_payload(topic, "error", ""), "message")
        assert "database" in payload["message"].lower(), payload
        # broadcast is unaffected
        ref = await c.broadcast(topic, "ping", {"n": 1})
        ack = await c.expect(reply_to(ref, topic))
        assert ack.payload == {"status": "ok", "response": {}}
        got = await c.expect(event_is("broadcast", topic))
        assert got.broadcast_view() == {"type": "broadcast", "event": "ping", "payload": {"n": 1}}
        # transient: retried every 5–10 s (§6.3)
        again = await expect_system(c, topic, timeout=11)
        assert again.payload["status"] == "error" and "database" in again.payload["message"].lower()
    assert srv.proc.poll() is None  # never a crash


@pytest.mark.parametrize("vsn", VSNS)
async def test_replication_ready_is_announced_once_the_stream_is_up(cdc: Any, vsn: str) -> None:
    """§3.7: ``config.broadcast.replication_ready`` asks for a ``system`` message once the
    database replication stream is up (no ``postgres_changes`` bindings needed)."""
    topic = unique_topic("ready")
    async with open_client(cdc.server, vsn) as c:
        jr = await c.join_ok(topic, {"broadcast": {"replication_ready": True}})
        frame = await c.expect(event_is("system", topic), CHANGE_WAIT)
        payload = {"extension": "system", "status": "ok", "message": "Replication connection established",
                   "channel": topic.split(":", 1)[1]}
        assert frame.value == c.wire(jr, None, topic, "system", payload)
