"""Presence an attacker tracks cannot poison a Redis-backed cluster (protocol.md §2.4, §5, §5.6).

Every node keeps a replica of every topic's members, fed through Redis, and hands the members to
each new joiner in its ``presence_state``: one member that cannot be carried between nodes, or
sent to a joiner, would break presence for the whole room on every node.  An attacker on one
node tracks a payload nested 300 levels deep (refused at the door with the documented reason),
one nested as deep as the server accepts, and one full of integers beyond 64 bits and odd
Unicode (NUL, line and paragraph separators, BOM, a noncharacter, an astral emoji, a bidi
override, a combining mark, U+10FFFF) under an odd-Unicode key, plus a track that is not valid
JSON at all (a lone surrogate), which is ignored.  Then 20 later joiners on both nodes, and a
node started after the attack (which learns the members from the others' state answers), must
all get a ``presence_state`` holding every member verbatim — the big integers with the digits
they were sent with — track their own presence, and keep their sockets.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

from clusterkit import CONVERGE_S, Cluster, assert_no_traceback, wait_async, wait_nodes_sync
from rawclient import V1, V2, Frame, RawClient, event_is, open_client, reply_to, unique_topic
from support import ServerProc

OK_REPLY = {"status": "ok", "response": {}}
TOO_DEEP = {"status": "error", "response": {"reason": "payload nested more than 128 levels deep"}}
ODD = "\u0000\u2028\u2029\ufeff\uffff\U0001f642\u202e\u0301e\U0010ffff"
BIG = 2**64  # one past the largest unsigned 64-bit integer
POISON: dict[str, Any] = {
    "big": BIG,
    "neg": -(2**100),
    "huge": 10**40 + 7,
    "edges": [2**64 - 1, -(2**63), -(2**63) - 1, BIG, 0],
    "nested": {"deeper": {"big": BIG, "uni": ODD}},
    "uni": ODD,
    ODD: "odd key",
}
ATTACKER_KEY = "\u202e\u0000attacker\U0001f642"
#: a track frame carries its payload at the third level (frame, push body, payload), so this
#: payload makes the frame exactly as deep as the server accepts (128 levels)
DEEPEST_ACCEPTED = 126
JOINERS = 20


def nest(levels: int) -> Any:
    """An object that nests ``levels`` levels (itself included): {"d": [[[...]]]}."""
    value: Any = []
    for _ in range(levels - 2):
        value = [value]
    return {"d": value}


def exact(value: Any) -> str:
    """JSON text that tells an integer from the float it would become (2**64 == 2.0**64)."""
    return json.dumps(value, sort_keys=True)


def payload_of(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in ("phx_ref", "phx_ref_prev")}


def assert_verbatim(raw: str | bytes, state: dict[str, Any], expected: dict[str, dict[str, Any]]) -> None:
    """Each expected key has one meta whose payload is exactly the tracked one, digits included."""
    text = raw if isinstance(raw, str) else raw.decode()
    assert "e+" not in text, text[:500]
    for key, payload in expected.items():
        metas = state[key]["metas"]
        assert len(metas) == 1, metas
        assert exact(payload_of(metas[0])) == exact(payload), (key, metas[0])


async def track(c: RawClient, topic: str, payload: Any) -> Frame:
    ref = await c.push(topic, "presence", {"type": "presence", "event": "track", "payload": payload})
    return await c.expect(reply_to(ref, topic), timeout=10)


async def state_with(node: ServerProc, topic: str, keys: set[str]) -> Frame | None:
    """The ``presence_state`` a new joiner on ``node`` gets, once it lists every key."""
    async with open_client(node, V2) as c:
        await c.join_ok(topic, {"presence": {"enabled": True}})
        frame = await c.expect(event_is("presence_state", topic))
        await c.barrier()
    return frame if set(frame.payload) >= keys else None


async def join_and_track(node: ServerProc, stack: AsyncExitStack, topic: str, i: int,
                         attackers: dict[str, dict[str, Any]]) -> RawClient:
    c = await stack.enter_async_context(open_client(node, V1 if i % 2 else V2))
    await c.join_ok(topic, {"presence": {"enabled": True, "key": f"joiner-{i}"}})
    frame = await c.expect(event_is("presence_state", topic), timeout=10)
    assert_verbatim(frame.raw, frame.payload, attackers)
    reply = await track(c, topic, {"i": i, "big": BIG + i})
    assert reply.payload == OK_REPLY
    return c


async def test_poisoned_presence_does_not_break_the_room_on_any_node(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(2)
    a, b = cluster.nodes
    topic = unique_topic("poison")
    attackers = {ATTACKER_KEY: POISON, "deep": nest(DEEPEST_ACCEPTED)}
    async with AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(open_client(b, V2))
        await watcher.join_ok(topic, {"presence": {"enabled": True}})
        await watcher.expect(event_is("presence_state", topic))

        attacker = await stack.enter_async_context(open_client(a, V2))
        jr = await attacker.join_ok(topic, {"presence": {"enabled": True, "key": ATTACKER_KEY}})
        await attacker.expect(event_is("presence_state", topic))
        for depth in (300, DEEPEST_ACCEPTED + 1):  # refused at the door, with the documented reason
            reply = await track(attacker, topic, nest(depth))
            assert reply.value == attacker.wire(jr, reply.ref, topic, "phx_reply", TOO_DEEP)
        ref = await attacker.push(topic, "presence", {"type": "presence", "event": "track",
                                                     "payload": {"lone": "\ud800"}})
        await attacker.assert_nothing_pending(reply_to(ref))  # not JSON (§2.4): ignored, no reply
        assert (await track(attacker, topic, POISON)).payload == OK_REPLY

        deep = await stack.enter_async_context(open_client(b, V1))
        await deep.join_ok(topic, {"presence": {"enabled": True, "key": "deep"}})
        await deep.expect(event_is("presence_state", topic))
        assert (await track(deep, topic, nest(DEEPEST_ACCEPTED))).payload == OK_REPLY

        # the watcher on the other node got each member in a diff, digits intact
        for key in attackers:
            diff = await watcher.expect(lambda f, key=key: f.event == "presence_diff" and key in f.payload["joins"])
            assert_verbatim(diff.raw, diff.payload["joins"], {key: attackers[key]})

        # 20 later joiners, half on each node, concurrently: state, track, and their sockets stay
        joiners = await asyncio.gather(*(join_and_track(a if i % 2 else b, stack, topic, i, attackers)
                                         for i in range(JOINERS)))
        for c in (*joiners, attacker, deep, watcher):
            await c.barrier()
            assert not c.is_closed

        # every node, and a node started after the attack (fed by the others' state answers),
        # tells a new joiner every member verbatim
        late = cluster.add_node()
        wait_nodes_sync(cluster.nodes, 3)
        everyone = {**attackers, **{f"joiner-{i}": {"i": i, "big": BIG + i} for i in range(JOINERS)}}
        for node in (a, b, late):
            frame = await wait_async(lambda node=node: state_with(node, topic, set(everyone)), CONVERGE_S,
                                     f"every member in presence_state on port {node.port}")
            assert sorted(frame.payload) == sorted(everyone)
            assert_verbatim(frame.raw, frame.payload, everyone)
    for node in cluster.nodes:
        assert_no_traceback(node)
