"""Payloads an anon client can send to break a relay: integers beyond 64 bits and JSON nested
hundreds of levels deep, over the WebSocket (both wire formats) and REST.

A relay passes payloads on unchanged; input it cannot pass on is refused at the door, without
closing the sender's socket, without a traceback in the log, and without touching anyone else.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from rawclient import V1, VSNS, event_is, open_client, reply_to, unique_topic, user_broadcast

BIG = "18446744073709551616"
NEG = "-123456789012345678901234567890"
DEEP = 300


def deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


async def post(server: Any, body: bytes) -> tuple[int, Any]:
    headers = {"apikey": server.anon_key, "Authorization": f"Bearer {server.anon_key}",
               "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.http_url}/api/broadcast", data=body, headers=headers) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)


@pytest.mark.parametrize("sender_vsn", VSNS)
@pytest.mark.parametrize("receiver_vsn", VSNS)
async def test_integers_beyond_64_bits_are_relayed_verbatim(server: Any, sender_vsn: str, receiver_vsn: str) -> None:
    topic = unique_topic("bigint")
    async with open_client(server, sender_vsn) as tx, open_client(server, receiver_vsn) as rx:
        await rx.join_ok(topic)
        await tx.join_ok(topic)
        text = '{"id":' + BIG + ',"neg":' + NEG + ',"ok":1}'
        # the raw client writes the frame with json.dumps, so the digits go out as written
        await tx.broadcast(topic, "n", json.loads(text))
        frame = await rx.expect(user_broadcast("n", topic))
    raw = frame.raw if isinstance(frame.raw, str) else frame.raw.decode()
    assert BIG in raw and NEG in raw and "e+" not in raw, raw


async def test_rest_relays_integers_beyond_64_bits_verbatim(server: Any) -> None:
    topic = unique_topic("bigint-rest")
    async with open_client(server, V1) as rx:
        await rx.join_ok(topic)
        body = ('{"messages":[{"topic":"' + topic.removeprefix("realtime:") + '","event":"n","payload":{"id":'
                + BIG + "}}]}").encode()
        status, _ = await post(server, body)
        assert status == 202
        frame = await rx.expect(user_broadcast("n", topic))
    assert '"id":' + BIG in str(frame.raw)


async def test_rest_refuses_json_nested_too_deeply_with_a_clear_400(server: Any) -> None:
    body = json.dumps({"messages": [{"topic": "deep", "event": "e", "payload": deep(DEEP)}]}).encode()
    status, reply = await post(server, body)
    assert (status, reply) == (400, {"message": "Request body nests JSON more than 128 levels deep"})
    status, reply = await post(server, b'{"messages": [')
    assert (status, reply) == (400, {"message": "Request body is not valid JSON"})
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("vsn", VSNS)
async def test_deep_broadcasts_and_tracks_are_dropped_and_the_sender_keeps_its_socket(server: Any, vsn: str) -> None:
    room, other = unique_topic("deep"), unique_topic("bystander")
    async with open_client(server, vsn) as attacker, open_client(server, vsn) as rx, \
            open_client(server, vsn) as bystander:
        await rx.join_ok(room, {"presence": {"enabled": True}})
        await attacker.join_ok(room, {"presence": {"enabled": True}})
        await bystander.join_ok(other)
        for _ in range(3):
            ref = await attacker.broadcast(room, "deep", deep(DEEP))
            refused = await attacker.expect(reply_to(ref))
            assert refused.payload == {"status": "error",
                                       "response": {"reason": "payload nested more than 128 levels deep"}}
            ref = await attacker.push(room, "presence", {"type": "presence", "event": "track", "payload": deep(DEEP)})
            assert (await attacker.expect(reply_to(ref))).payload["status"] == "error"
            await bystander.broadcast(other, "ok", {"n": 1})
        # a legit message from the attacker after its deep ones is the marker: the deep ones,
        # had they been relayed, would have reached rx before it
        await attacker.broadcast(room, "after", {"n": 2})
        await rx.assert_nothing_before(user_broadcast("after", room), user_broadcast("deep", room))
        await attacker.barrier()  # the attacker's socket is open and answered
        # a later joiner with presence gets a presence_state (nothing poisoned the room)
        async with open_client(server, vsn) as late:
            await late.join_ok(room, {"presence": {"enabled": True}})
            await late.expect(event_is("presence_state", room))
        assert not attacker.is_closed
    assert "Traceback" not in server.log()
