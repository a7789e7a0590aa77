"""Frames, heartbeats, bad input, timeouts and unmatched topics (protocol.md §1.5, §2.1–2.4)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from support import ServerProc
from rawclient import V1, V2, VSNS, RawClient, kind3, open_client, reply_to, unique_topic, user_broadcast

OK_REPLY = {"status": "ok", "response": {}}
UNMATCHED = {"status": "error", "response": {"reason": "unmatched topic"}}


# --- shapes (§1.5) --------------------------------------------------------------------------


@pytest.mark.compat(9, 25)
async def test_v1_frames_have_exactly_topic_event_payload_ref(server: ServerProc) -> None:
    topic = unique_topic()
    async with open_client(server, V1) as c:
        await c.send_msg(topic, "phx_join", {"config": {"broadcast": {"self": True, "ack": True}}}, "1", "1")
        reply = await c.next_frame()
        assert set(reply.value) == {"topic", "event", "payload", "ref"}  # never join_ref, even on join replies
        assert reply.value == c.wire("1", "1", topic, "phx_reply", {"status": "ok", "response": {"postgres_changes": []}})
        await c.broadcast(topic, "e", {"a": 1}, ref="2")
        for _ in range(2):  # the ack reply and the self-delivered broadcast, in either order
            frame = await c.next_frame()
            assert set(frame.value) == {"topic", "event", "payload", "ref"}
        await c.heartbeat(None)


@pytest.mark.compat(25)
async def test_v2_join_reply_carries_join_ref_and_ref(server: ServerProc) -> None:
    topic = unique_topic()
    async with open_client(server, V2) as c:
        await c.send_msg(topic, "phx_join", {"config": {}}, "4", "3")
        reply = await c.next_frame()
        assert reply.value == ["3", "4", topic, "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}]


@pytest.mark.compat(10)
async def test_v2_frame_with_extra_elements_is_accepted(server: ServerProc) -> None:
    topic = unique_topic()
    async with open_client(server, V2) as c:
        await c.send_text(json.dumps([None, "5", "phoenix", "heartbeat", {}, "extra", 7]))
        assert (await c.next_frame()).value == [None, "5", "phoenix", "phx_reply", OK_REPLY]
        await c.send_text(json.dumps(["6", "6", topic, "phx_join", {"config": {}}, None]))
        reply = await c.next_frame()
        assert reply.value == ["6", "6", topic, "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}]


@pytest.mark.parametrize(
    "text",
    [
        '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1","join_ref":null}',  # V1 object
        '[null,"1","phoenix","heartbeat"]',  # too short
        '"just a string"',
        "42",
        "null",
    ],
)
@pytest.mark.compat(10)
async def test_wrong_shape_on_v2_is_ignored(server: ServerProc, text: str) -> None:
    async with open_client(server, V2) as c:
        await c.send_text(text)
        await c.assert_nothing_pending()
        await c.heartbeat("2")


@pytest.mark.parametrize(
    "text",
    [
        '[null,"1","phoenix","heartbeat",{}]',  # V2 array
        '{"topic":"phoenix","event":"heartbeat","payload":{}}',  # no ref key
        '{"topic":"phoenix","payload":{},"ref":"1"}',  # no event key
        '{"event":"heartbeat","payload":{},"ref":"1"}',  # no topic key
        '{"topic":"phoenix","event":"heartbeat","ref":"1"}',  # no payload key
    ],
)
async def test_wrong_shape_on_v1_is_ignored(server: ServerProc, text: str) -> None:
    async with open_client(server, V1) as c:
        await c.send_text(text)
        await c.assert_nothing_pending()
        await c.heartbeat("2")


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize("text", ["{not json", '["unterminated', "", "\ufeff{}"])
@pytest.mark.compat(11)
async def test_malformed_json_is_ignored_and_heartbeat_still_answered(server: ServerProc, vsn: str, text: str) -> None:
    async with open_client(server, vsn) as c:
        await c.send_text(text)
        await c.assert_nothing_pending()
        await c.heartbeat("after")


async def test_binary_frame_on_v1_socket_is_ignored(server: ServerProc) -> None:
    topic = unique_topic()
    async with open_client(server, V1) as c:
        jr = await c.join_ok(topic, {"broadcast": {"self": True, "ack": True}})
        # A well-formed kind-3 broadcast is still not something a V1 socket understands (§2.4).
        await c.send_bytes(kind3(jr, "9", topic, "e", b'{"x":1}', 1))
        # A text broadcast sent after it is acked and echoed; neither an ack nor an echo of the
        # binary frame came first.
        ref = await c.broadcast(topic, "marker", {})
        await c.assert_nothing_before(user_broadcast("marker", topic), pred=lambda f: f.ref != ref)
        await c.expect(reply_to(ref, topic))
        await c.assert_nothing_pending()


@pytest.mark.parametrize("data", [b"\x09\x00\x00", b"\x03", b"", b"\x04\x01\x01\x00\x01ab{}"])
async def test_unknown_or_truncated_binary_on_v2_is_ignored(server: ServerProc, data: bytes) -> None:
    async with open_client(server, V2) as c:
        await c.send_bytes(data)
        await c.assert_nothing_pending()
        await c.heartbeat("1")


# --- heartbeat (§2.1) and ping (§2.2) --------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize("ref", ["5", None])
@pytest.mark.compat(15, 16)
async def test_heartbeat_is_answered_without_join(server: ServerProc, vsn: str, ref: str | None) -> None:
    async with open_client(server, vsn) as c:
        await c.send_msg("phoenix", "heartbeat", {}, ref, None)
        frame = await c.next_frame()
        assert frame.value == c.wire(None, ref, "phoenix", "phx_reply", OK_REPLY)
        await c.assert_nothing_pending()


@pytest.mark.compat(16)
async def test_python_style_v1_heartbeat_gets_null_ref(server: ServerProc) -> None:
    async with open_client(server, V1) as c:
        await c.send_text('{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}')
        frame = await c.next_frame()
        assert frame.value == {"topic": "phoenix", "event": "phx_reply", "payload": OK_REPLY, "ref": None}


@pytest.mark.parametrize("vsn", VSNS)
async def test_many_heartbeats_each_answered_in_order(server: ServerProc, vsn: str) -> None:
    async with open_client(server, vsn) as c:
        for i in range(20):
            await c.send_msg("phoenix", "heartbeat", {}, str(i), None)
        for i in range(20):
            assert (await c.next_frame()).value == c.wire(None, str(i), "phoenix", "phx_reply", OK_REPLY)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(18)
async def test_websocket_ping_is_answered_with_pong(server: ServerProc, vsn: str) -> None:
    async with open_client(server, vsn) as c:
        await c.ping()
        await c.heartbeat("1")


@pytest.mark.compat(17, partial="run with a 1.5 s idle timeout; the 60 s default itself is not exercised")
async def test_idle_socket_is_closed_but_heartbeating_keeps_it_open(server_factory: Any) -> None:
    srv = server_factory(REALTIME_IDLE_TIMEOUT_MS="1500")
    async with open_client(srv, V2) as busy, open_client(srv, V1) as idle:
        # The busy socket heartbeats every 0.4 s for ~3 s (twice the idle timeout) and must survive.
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while True:
            last_inbound = loop.time()
            await busy.heartbeat(str(i))
            i += 1
            if loop.time() - start >= 3.0:
                break
            await asyncio.sleep(0.4)  # pacing the client's own heartbeats, not waiting for the server
        assert not busy.is_closed
        # The silent socket was closed by the server meanwhile.
        assert idle.is_closed
        # Once the busy socket stops talking it is closed too, after about the idle timeout.
        await busy.wait_closed(4.0)
        assert loop.time() - last_inbound >= 1.3


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(19, partial="run with a 2,000-byte limit; the 5 MB default is not exercised")
async def test_frame_over_max_closes_with_1009(server_factory: Any, vsn: str) -> None:
    srv = server_factory(REALTIME_MAX_FRAME_BYTES="2000")
    async with open_client(srv, vsn) as c:
        # Just under the limit: processed normally.
        small = {"pad": "x" * 1500}
        await c.send_msg("phoenix", "heartbeat", small, "1", None)
        assert (await c.next_frame()).value == c.wire(None, "1", "phoenix", "phx_reply", OK_REPLY)
        # Over the limit: the connection is closed with 1009 (§2.3).
        await c.send_msg("phoenix", "heartbeat", {"pad": "x" * 4000}, "2", None)
        assert await c.wait_closed(3.0) == 1009


@pytest.mark.compat(19, partial="run with a 2,000-byte limit; the 5 MB default is not exercised")
async def test_binary_frame_over_max_closes_with_1009(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_FRAME_BYTES="2000")
    topic = unique_topic()
    async with open_client(srv, V2) as c:
        await c.join_ok(topic)
        await c.send_kind3(topic, "big", b"\x00" * 5000, 0)
        assert await c.wait_closed(3.0) == 1009


# --- unmatched topics (§2.4) -----------------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize("event", ["broadcast", "presence", "access_token", "custom_event"])
@pytest.mark.compat(20)
async def test_push_to_unjoined_topic_gets_unmatched_topic(server: ServerProc, vsn: str, event: str) -> None:
    topic = unique_topic("nope")
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, event, {"type": event}, "9", "1")
        frame = await c.next_frame()
        assert frame.value == c.wire(None, "9", topic, "phx_reply", UNMATCHED)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize("topic", ["room1", "phoenix:x", "Realtime:room1", "private:room1"])
@pytest.mark.compat(21)
async def test_join_without_realtime_prefix_gets_unmatched_topic(server: ServerProc, vsn: str, topic: str) -> None:
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", {"config": {}}, "3", "3")
        frame = await c.next_frame()
        assert frame.value == c.wire(None, "3", topic, "phx_reply", UNMATCHED)
        await c.assert_nothing_pending()


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(41)
async def test_leave_of_unjoined_topic_is_ok(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_leave", {}, "4", "1")
        frame = await c.next_frame()
        assert (frame.ref, frame.topic, frame.event, frame.payload) == ("4", topic, "phx_reply", OK_REPLY)
        if vsn == V1:
            assert frame.value == c.wire(None, "4", topic, "phx_reply", OK_REPLY)
        await c.assert_nothing_pending()


# --- join_ref leniency (§2.4, checklist 22) -------------------------------------------------


async def _ack_broadcast(c: RawClient, topic: str, jr: str, join_ref: Any, ref: str) -> None:
    await c.broadcast(topic, "e", {"n": ref}, ref=ref, join_ref=join_ref)
    frame = await c.expect(reply_to(ref, topic))
    # The reply carries the channel's *current* join_ref, whatever the push said (§1.5).
    assert frame.value == c.wire(jr, ref, topic, "phx_reply", OK_REPLY)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(22)
async def test_channel_push_with_missing_or_stale_join_ref_is_processed(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        jr = await c.join_ok(topic, {"broadcast": {"ack": True}}, ref="10", join_ref="10")
        await _ack_broadcast(c, topic, jr, None, "11")
        await _ack_broadcast(c, topic, jr, "999", "12")
        await _ack_broadcast(c, topic, jr, jr, "13")


@pytest.mark.compat(22)
async def test_v1_push_without_join_ref_key_is_processed(server: ServerProc) -> None:
    topic = unique_topic()
    async with open_client(server, V1) as c:
        await c.join_ok(topic, {"broadcast": {"ack": True}})
        msg = {"topic": topic, "event": "broadcast", "payload": {"type": "broadcast", "event": "e", "payload": {}}, "ref": "77"}
        await c.send_text(json.dumps(msg))
        frame = await c.expect(reply_to("77", topic))
        assert frame.value == c.wire(None, "77", topic, "phx_reply", OK_REPLY)
