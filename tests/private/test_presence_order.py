"""On a private channel too, the ``presence_diff`` a track or untrack causes reaches the pushing
client before the push's reply (Phoenix's tracker produces the diff, then the channel replies),
on one node and on two nodes sharing a Redis backbone and the same database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from rawclient import VSNS, RawClient, event_is, open_client, reply_to
from support import RedisServer, ServerProc, start_server

PrivateDb = Any  # conftest.PrivateDb (conftest modules are not importable by name)
PRESENCE, READ, WRITE = "presence", "read", "write"
OK: dict[str, Any] = {"status": "ok", "response": {}}


def private_topic() -> str:
    return f"order:{uuid.uuid4().hex[:10]}"


def presence_config(key: str) -> dict[str, Any]:
    return {"private": True, "presence": {"enabled": True, "key": key}}


async def push_in_order(c: RawClient, topic: str, event: str, key: str, payload: Any = None) -> None:
    body: dict[str, Any] = {"type": "presence", "event": event}
    if payload is not None:
        body["payload"] = payload
    ref = await c.push(topic, "presence", body)
    reply = await c.expect(reply_to(ref, topic))
    assert reply.value == c.wire(c.join_refs[topic], ref, topic, "phx_reply", OK)
    side = "joins" if event == "track" else "leaves"
    diff = await c.expect(lambda f: f.event == "presence_diff" and f.topic == topic and key in f.payload[side])
    assert c.position(diff) < c.position(reply), "the reply overtook the presence_diff it caused"


async def track_update_untrack(pdb: PrivateDb, tracker_node: ServerProc, watcher_node: ServerProc, vsn: str) -> None:
    tracker, watcher = str(uuid.uuid4()), str(uuid.uuid4())
    sub = private_topic()
    topic = f"realtime:{sub}"
    pdb.grant(tracker, sub, (PRESENCE, READ), (PRESENCE, WRITE))
    pdb.grant(watcher, sub, (PRESENCE, READ))
    async with open_client(tracker_node, vsn) as t, open_client(watcher_node, vsn) as w:
        await w.join_ok(topic, presence_config("w"), access_token=pdb.token(watcher))
        await w.expect(event_is("presence_state", topic))
        await t.join_ok(topic, presence_config("t"), access_token=pdb.token(tracker))
        await t.expect(event_is("presence_state", topic))
        # the first track waits for the presence-write check (§5.5); the update and the untrack
        # use the cached right
        await push_in_order(t, topic, "track", "t", {"n": 1})
        await push_in_order(t, topic, "track", "t", {"n": 2})
        await push_in_order(t, topic, "untrack", "t")
        # the watcher sees the same three changes (in one diff or more: REALTIME_PRESENCE_COALESCE_MS)
        joined: list[Any] = []
        while True:
            d = await w.expect(lambda f: f.event == "presence_diff" and f.topic == topic)
            joined += [m["n"] for m in d.payload["joins"].get("t", {}).get("metas", [])]
            if any(m.get("n") == 2 for m in d.payload["leaves"].get("t", {}).get("metas", [])):
                break
        assert joined == [1, 2]


@pytest.mark.parametrize("vsn", VSNS)
async def test_private_presence_diff_precedes_the_reply_on_one_node(pdb: PrivateDb, vsn: str) -> None:
    await track_update_untrack(pdb, pdb.server, pdb.server, vsn)


@pytest.fixture(scope="module")
def two_nodes(pdb: PrivateDb, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProc]]:
    """Two more nodes on the module's database, joined through their own ``redis-server``;
    each reads database broadcasts from a slot of its own, and they share one change-feed slot."""
    redis = RedisServer()
    redis.start()
    tmp = str(tmp_path_factory.mktemp("private-cluster"))
    nodes: list[ServerProc] = []
    try:
        for i in range(2):
            nodes.append(start_server(
                tmp,
                REALTIME_DATABASE_URL=pdb.dsn,
                REALTIME_REDIS_URL=redis.url,
                REALTIME_PUBLICATION="rc_pub_order_cluster",
                REALTIME_SLOT_NAME="rc_slot_order_cluster",
                REALTIME_MESSAGES_PUBLICATION="rc_mpub_order_cluster",
                REALTIME_MESSAGES_SLOT_NAME=f"rc_mslot_order_node{i}",
            ))
        yield nodes
        for node in nodes:
            assert "Traceback" not in node.log(), node.log()[-4000:]
    finally:
        for node in nodes:
            node.stop()
        redis.cleanup()


@pytest.mark.parametrize("vsn", VSNS)
async def test_private_presence_diff_precedes_the_reply_across_nodes(
        pdb: PrivateDb, two_nodes: list[ServerProc], vsn: str) -> None:
    await track_update_untrack(pdb, two_nodes[0], two_nodes[1], vsn)
