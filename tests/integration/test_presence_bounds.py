"""A topic's presence state is bounded, and a state bigger than the outbox cap still reaches
every reader that keeps up (protocol.md §5.7).

The scenario is the one that used to close a whole room: six members tracking 2.9 MB each, all
within the payload limit, make a ``presence_state`` of ~17 MB, twice the 8 MiB outbox. Now the
sixth track is refused (the state would pass ``REALTIME_MAX_PRESENCE_STATE_BYTES``, 16 MiB by
default) and twenty later joiners each receive the five members' 14.5 MB state without being
taken for slow consumers.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from rawclient import V1, V2, RawClient, event_is, open_client, reply_to, unique_topic, user_broadcast

PRESENCE_ON = {"presence": {"enabled": True}}
REFUSED = {"status": "error", "response": {"reason": "presence state of this topic would exceed its size limit"}}
MEMBER_BYTES = 2_900_000
JOINERS = 20


async def track(c: RawClient, topic: str, payload: Any) -> Any:
    ref = await c.push(topic, "presence", {"type": "presence", "event": "track", "payload": payload})
    return (await c.expect(reply_to(ref, topic), timeout=30)).payload


async def test_a_track_past_the_state_bound_is_refused_and_big_states_reach_every_joiner(server: Any) -> None:
    topic = unique_topic("big-presence")
    async with AsyncExitStack() as stack:
        members = [await stack.enter_async_context(open_client(server, V2 if i % 2 else V1)) for i in range(6)]
        for i, member in enumerate(members):
            await member.join_ok(topic, PRESENCE_ON)
            verdict = await track(member, topic, {"n": i, "blob": "x" * MEMBER_BYTES})
            assert verdict == (REFUSED if i == 5 else {"status": "ok", "response": {}}), i
        refused = members[5]
        # the refused member stays joined: its broadcast reaches the others
        await refused.broadcast(topic, "still-here", {})
        await members[0].expect(user_broadcast("still-here", topic), timeout=30)

        joiners = [await stack.enter_async_context(open_client(server, V2 if i % 2 else V1)) for i in range(JOINERS)]
        await asyncio.gather(*(j.join_ok(topic, PRESENCE_ON) for j in joiners))
        states = await asyncio.gather(*(j.expect(event_is("presence_state", topic), timeout=60) for j in joiners))
        for state in states:
            metas = [m for entry in state.payload.values() for m in entry["metas"]]
            assert sorted(m["n"] for m in metas) == [0, 1, 2, 3, 4]
            assert all(len(m["blob"]) == MEMBER_BYTES for m in metas)
        # every joiner is still connected and answered after the state
        await asyncio.gather(*(j.barrier(timeout=30) for j in joiners))
        assert not any(j.is_closed for j in joiners)

        # room freed: once a member leaves, the refused one's track is accepted
        ref = await members[0].push(topic, "presence", {"type": "presence", "event": "untrack"})
        await members[0].expect(reply_to(ref, topic), timeout=30)
        assert await track(refused, topic, {"n": 5, "blob": "y"}) == {"status": "ok", "response": {}}
    assert "Traceback" not in server.log()


async def test_the_bound_counts_members_on_every_socket_and_a_retrack_replaces_its_own_share(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_PRESENCE_STATE_BYTES="10000")
    topic = unique_topic("bound")
    async with open_client(srv) as a, open_client(srv) as b:
        await a.join_ok(topic, PRESENCE_ON)
        await b.join_ok(topic, PRESENCE_ON)
        assert (await track(a, topic, {"blob": "a" * 6000}))["status"] == "ok"
        assert await track(b, topic, {"blob": "b" * 6000}) == REFUSED
        # a's re-track replaces its own share: a smaller and then an equal payload both fit
        assert (await track(a, topic, {"blob": "a" * 3000}))["status"] == "ok"
        assert (await track(b, topic, {"blob": "b" * 6000}))["status"] == "ok"
        assert await track(a, topic, {"blob": "a" * 6000}) == REFUSED
        # the refused re-track left a's earlier presence in place
        async with open_client(srv) as c:
            await c.join_ok(topic, PRESENCE_ON)
            state = (await c.expect(event_is("presence_state", topic))).payload
        blobs = sorted(len(m["blob"]) for entry in state.values() for m in entry["metas"])
        assert blobs == [3000, 6000]
    assert "Traceback" not in srv.log()
