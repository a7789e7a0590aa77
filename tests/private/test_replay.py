"""Broadcast replay on private channels (protocol.md §3.5, §4.8; checklist 69–71).

Stored rows are inserted straight into ``realtime.messages`` with chosen ``inserted_at`` values
(in tomorrow's partition, which the server creates ahead), so ``since``/``limit`` boundaries are
exact.  The database feed broadcasts those inserts live too, so before a replay join a member
already on the topic waits for the last row: after that nothing stored can still arrive live.
Replayed messages are written right after the join reply, so a row committed after the join is
the barrier for "nothing more was replayed".
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rawclient import V1, V2, VSNS, Frame, RawClient, event_is, open_client

READ, BROADCAST, PRESENCE = "read", "broadcast", "presence"
PrivateDb = Any  # conftest.PrivateDb
WAIT = 10.0
INVALID = "UnableToReplayMessages: Replay params are not valid"

_TOMORROW = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=10, microsecond=0)
BASE_MS = int(_TOMORROW.timestamp() * 1000)


def private_topic() -> str:
    return f"replay:{uuid.uuid4().hex[:10]}"


def insert_row(pdb: PrivateDb, sub: str, event: str, at_ms: int, payload: Any = None, *,
               row_id: str | None = None, binary: bytes | None = None, private: bool = True,
               extension: str = BROADCAST) -> str:
    row_id = row_id or str(uuid.uuid4())
    pdb.execute(
        "insert into realtime.messages (id, topic, extension, payload, binary_payload, event, private, inserted_at)"
        " values (%s, %s, %s, %s::jsonb, %s, %s, %s, to_timestamp(%s / 1000.0) at time zone 'utc')",
        (row_id, sub, extension, None if payload is None else json.dumps(payload), binary, event, private, at_ms),
    )
    return row_id


async def member(pdb: PrivateDb, c: RawClient, sub: str, config: dict[str, Any], *rights: tuple[str, str]) -> Frame:
    user = str(uuid.uuid4())
    pdb.grant(user, sub, *(rights or ((BROADCAST, READ),)))
    return await c.join(f"realtime:{sub}", {"private": True, **config}, access_token=pdb.token(user))


async def stored(pdb: PrivateDb, sub: str, rows: list[tuple[str, int, Any]]) -> list[str]:
    """Insert rows (event, at_ms, payload) and wait until the live feed has passed them all."""
    topic = f"realtime:{sub}"
    async with open_client(pdb.server, V2) as watcher:
        assert (await member(pdb, watcher, sub, {})).payload["status"] == "ok"
        ids = [insert_row(pdb, sub, event, at, payload) for event, at, payload in rows]
        last = None
        while last is None or json.loads(last.metadata or b"{}").get("id") != ids[-1]:
            last = await watcher.expect(event_is("broadcast", topic), WAIT)
    return ids


def replayed(c: RawClient, jr: str, topic: str, event: str, payload: Any, msg_id: str) -> Any:
    """§4.8: a text push carrying the join_ref, with meta {"replayed": true, "id": …}."""
    body = {"type": "broadcast", "event": event, "payload": payload, "meta": {"replayed": True, "id": msg_id}}
    return c.wire(jr, None, topic, "broadcast", body) if c.vsn == V2 else c.wire(None, None, topic, "broadcast", body)


async def until_barrier(pdb: PrivateDb, c: RawClient, sub: str) -> list[Frame]:
    """Every broadcast ``c`` gets before a live row committed now, which is returned last."""
    pdb.execute("select realtime.send('{\"barrier\": true}'::jsonb, 'barrier', %s)", (sub,))
    frames = []
    while True:
        frame = await c.expect(event_is("broadcast", f"realtime:{sub}"), WAIT)
        frames.append(frame)
        if frame.payload.get("event") == "barrier":
            assert "replayed" not in json.dumps(frame.payload)
            return frames


# --- what is replayed (items 69, 70) ---------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(69)
async def test_newest_limit_rows_are_replayed_oldest_first(pdb: PrivateDb, vsn: str) -> None:
    sub = private_topic()
    topic = f"realtime:{sub}"
    ids = await stored(pdb, sub, [(f"e{i}", BASE_MS + i * 1000, {"n": i}) for i in range(6)])
    # noise the replay must ignore: another topic, a public row, a presence row
    insert_row(pdb, f"{sub}x", "other", BASE_MS + 2500, {"n": -1})
    insert_row(pdb, sub, "public", BASE_MS + 2500, {"n": -2}, private=False)
    insert_row(pdb, sub, "presence", BASE_MS + 2500, {"n": -3}, extension=PRESENCE)
    async with open_client(pdb.server, vsn) as c:
        reply = await member(pdb, c, sub, {"broadcast": {"replay": {"since": BASE_MS, "limit": 3}}})
        assert reply.payload == {"status": "ok", "response": {"postgres_changes": []}}
        jr = reply.ref
        frames = [await c.next_frame() for _ in range(3)]  # right after the reply, in order
        assert [f.value for f in frames] == [
            replayed(c, jr, topic, f"e{i}", {"n": i}, ids[i]) for i in (3, 4, 5)
        ]
        assert c.position(frames[0]) == c.position(reply) + 1
        assert len(await until_barrier(pdb, c, sub)) == 1  # nothing else was replayed


@pytest.mark.parametrize(("since_offset", "expected"), [(2000, [2, 3, 4]), (2001, [3, 4]), (5000, [])])
@pytest.mark.compat(69)
async def test_since_is_an_inclusive_millisecond_bound(pdb: PrivateDb, since_offset: int, expected: list[int]) -> None:
    sub = private_topic()
    topic = f"realtime:{sub}"
    ids = await stored(pdb, sub, [(f"e{i}", BASE_MS + i * 1000, {"n": i}) for i in range(5)])
    async with open_client(pdb.server, V2) as c:
        reply = await member(pdb, c, sub, {"broadcast": {"replay": {"since": BASE_MS + since_offset}}})
        assert reply.payload["status"] == "ok"
        got = (await until_barrier(pdb, c, sub))[:-1]
        assert [f.value for f in got] == [replayed(c, reply.ref, topic, f"e{i}", {"n": i}, ids[i]) for i in expected]


@pytest.mark.parametrize(("limit", "count"), [(0, 1), (-3, 1), (1, 1), (25, 25), (100, 25)])
@pytest.mark.compat(69)
async def test_limit_is_clamped_to_1_through_25(pdb: PrivateDb, limit: int, count: int) -> None:
    sub = private_topic()
    ids = await stored(pdb, sub, [(f"e{i}", BASE_MS + i, {"n": i}) for i in range(30)])
    async with open_client(pdb.server, V2) as c:
        reply = await member(pdb, c, sub, {"broadcast": {"replay": {"since": BASE_MS, "limit": limit}}})
        assert reply.payload["status"] == "ok"
        frames = (await until_barrier(pdb, c, sub))[:-1]
        assert [f.payload["meta"] for f in frames] == [{"replayed": True, "id": i} for i in ids[30 - count:]]


async def test_default_limit_is_25(pdb: PrivateDb) -> None:
    sub = private_topic()
    ids = await stored(pdb, sub, [(f"e{i}", BASE_MS + i, {"n": i}) for i in range(27)])
    async with open_client(pdb.server, V1) as c:
        reply = await member(pdb, c, sub, {"broadcast": {"replay": {"since": 0}}})
        assert reply.payload["status"] == "ok"
        frames = (await until_barrier(pdb, c, sub))[:-1]
        assert [f.payload["meta"] for f in frames] == [{"replayed": True, "id": i} for i in ids[2:]]


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(70)
async def test_a_live_copy_of_a_replayed_message_is_not_delivered_again(pdb: PrivateDb, vsn: str) -> None:
    sub = private_topic()
    topic = f"realtime:{sub}"
    [kept] = await stored(pdb, sub, [("e0", BASE_MS, {"n": 0})])
    async with open_client(pdb.server, vsn) as c:
        reply = await member(pdb, c, sub, {"broadcast": {"replay": {"since": BASE_MS}}})
        first = await c.expect(event_is("broadcast", topic), WAIT)
        assert first.value == replayed(c, reply.ref, topic, "e0", {"n": 0}, kept)
        # The same message id arrives live (a second row with that id): suppressed (item 70).
        insert_row(pdb, sub, "e0", BASE_MS + 1, {"n": 0}, row_id=kept)
        fresh = insert_row(pdb, sub, "e1", BASE_MS + 2, {"n": 1})
        live = await c.expect(event_is("broadcast", topic), WAIT)
        assert live.payload["event"] == "e1" and live.payload["meta"] == {"id": fresh}


async def test_binary_rows_replay_to_v2_as_kind4_and_are_skipped_for_v1(pdb: PrivateDb) -> None:
    sub = private_topic()
    topic = f"realtime:{sub}"
    json_id = (await stored(pdb, sub, [("text", BASE_MS, {"t": 1})]))[0]
    body = b"\x00\x01binary\xff"
    async with open_client(pdb.server, V2) as watcher:
        assert (await member(pdb, watcher, sub, {})).payload["status"] == "ok"
        bin_id = insert_row(pdb, sub, "blob", BASE_MS + 1, binary=body)
        await watcher.expect(event_is("broadcast", topic), WAIT)
    async with open_client(pdb.server, V2) as v2, open_client(pdb.server, V1) as v1:
        cfg = {"broadcast": {"replay": {"since": BASE_MS}}}
        r2 = await member(pdb, v2, sub, cfg)
        r1 = await member(pdb, v1, sub, cfg)
        text2 = await v2.next_frame()
        assert text2.value == replayed(v2, r2.ref, topic, "text", {"t": 1}, json_id)
        blob = await v2.next_frame()
        assert blob.is_binary and blob.kind == 4 and blob.encoding == 0 and blob.user_event == "blob"
        assert blob.data == body and json.loads(blob.metadata) == {"replayed": True, "id": bin_id}
        assert (await v1.next_frame()).value == replayed(v1, r1.ref, topic, "text", {"t": 1}, json_id)
        assert len(await until_barrier(pdb, v1, sub)) == 1  # the binary row was skipped for V1


# --- refusals (item 71, §3.5) ------------------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(71)
async def test_replay_on_a_public_channel_is_refused(pdb: PrivateDb, vsn: str) -> None:
    topic = f"realtime:{private_topic()}"
    async with open_client(pdb.server, vsn) as c:
        reply = await c.join(topic, {"broadcast": {"replay": {"since": BASE_MS}}}, ref="1", join_ref="1")
        assert reply.value == c.wire("1", "1", topic, "phx_reply", {
            "status": "error", "response": {"reason": "UnableToReplayMessages: Replay is not allowed for public channels"}})
        await c.assert_nothing_pending(event_is("phx_close"))


@pytest.mark.parametrize(
    "replay",
    [{}, {"limit": 5}, {"since": "1700000000000"}, {"since": 1.5}, {"since": True}, {"since": None},
     {"since": 1, "limit": "5"}, {"since": 1, "limit": 2.5}, {"since": 1, "limit": False}, "yesterday"],
    ids=["empty", "missing-since", "string-since", "float-since", "bool-since", "null-since",
         "string-limit", "float-limit", "bool-limit", "not-a-map"],
)
@pytest.mark.compat(71)
async def test_invalid_replay_params_are_refused(pdb: PrivateDb, replay: Any) -> None:
    sub = private_topic()
    async with open_client(pdb.server, V2) as c:
        reply = await member(pdb, c, sub, {"broadcast": {"replay": replay}})
        assert reply.payload == {"status": "error", "response": {"reason": INVALID}}


async def test_replay_without_broadcast_read_is_refused(pdb: PrivateDb) -> None:
    sub = private_topic()
    cfg = {"presence": {"enabled": True}}
    async with open_client(pdb.server, V2) as c, open_client(pdb.server, V2) as d:
        # presence-read alone admits the join, but not a replay (§4.8)
        assert (await member(pdb, c, sub, cfg, (PRESENCE, READ))).payload["status"] == "ok"
        reply = await member(pdb, d, sub, {**cfg, "broadcast": {"replay": {"since": 0}}}, (PRESENCE, READ))
        assert reply.payload == {"status": "error", "response": {
            "reason": f"Unauthorized: You do not have permissions to read from this Channel topic: {sub}"}}
