"""Broadcast over WebSocket: self, ack, verbatim relay, V1↔V2 translation, size (protocol.md §4)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import ServerProc
from rawclient import V1, V2, VSNS, Frame, RawClient, kind4, open_client, reply_to, unique_topic, user_broadcast

OK_REPLY = {"status": "ok", "response": {}}


def is_broadcast(f: Frame) -> bool:
    return bool(f.event == "broadcast")


def assert_text_delivery(receiver: RawClient, frame: Any, topic: str, payload: Any) -> None:
    """§4.3 row 1: fan-out of a text push is the payload object verbatim, refs null."""
    assert not frame.is_binary, frame.raw
    assert frame.value == receiver.wire(None, None, topic, "broadcast", payload)


def assert_user_broadcast_delivery(receiver: RawClient, frame: Any, topic: str, event: str, data: Any) -> None:
    """§4.3 row 2: a kind-3 JSON push reaches V1 as {event,payload,type}; V2 as kind 4 enc 1
    (a V2 text frame with the same decoded object is an accepted simplification, §1.6)."""
    if receiver.vsn == V1:
        assert frame.value == receiver.wire(
            None, None, topic, "broadcast", {"event": event, "payload": data, "type": "broadcast"}
        )
    elif frame.is_binary:
        assert frame.raw == kind4(topic, event, json.dumps(data, separators=(",", ":")).encode(), 1) or (
            frame.kind == 4 and frame.encoding == 1 and frame.topic == topic and frame.metadata == b""
        ), frame.raw
        assert frame.broadcast_view() == {"type": "broadcast", "event": event, "payload": data}
    else:
        assert frame.value[:4] == [None, None, topic, "broadcast"]
        assert frame.broadcast_view() == {"type": "broadcast", "event": event, "payload": data}


@pytest.mark.parametrize("sender_vsn", VSNS)
@pytest.mark.parametrize("receiver_vsn", VSNS)
@pytest.mark.compat(49, 51, 52)
async def test_text_broadcast_relayed_verbatim_and_not_echoed(
    server: ServerProc, sender_vsn: str, receiver_vsn: str
) -> None:
    topic = unique_topic()
    payload = {
        "type": "broadcast",
        "event": "cursor",
        "payload": {"x": 1, "y": [1.5, None, "é"], "nested": {"deep": True}},
        "extra_key": "kept",
        "meta": {"anything": 1},
    }
    async with open_client(server, sender_vsn) as sender, open_client(server, receiver_vsn) as receiver:
        await sender.join_ok(topic)
        await receiver.join_ok(topic)
        await sender.push(topic, "broadcast", payload)
        frame = await receiver.expect(is_broadcast)
        assert_text_delivery(receiver, frame, topic, payload)
        # The fan-out has happened (the receiver has it): self:false → no echo; ack:false → no reply.
        await sender.assert_nothing_pending()


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(50)
async def test_self_true_echoes_to_sender(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    payload = {"type": "broadcast", "event": "ping", "payload": {"n": 1}}
    async with open_client(server, vsn) as c:
        await c.join_ok(topic, {"broadcast": {"self": True}})
        await c.push(topic, "broadcast", payload)
        frame = await c.expect(is_broadcast)
        assert_text_delivery(c, frame, topic, payload)
        # Exactly once, and no ack: a later message's echo comes with nothing before it.
        await c.broadcast(topic, "marker", {})
        await c.assert_nothing_before(user_broadcast("marker", topic))
        await c.assert_nothing_pending()


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(51)
async def test_ack_replies_on_each_push_ref(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c, open_client(server, V2) as receiver:
        jr = await c.join_ok(topic, {"broadcast": {"ack": True}})
        await receiver.join_ok(topic)
        refs = [await c.broadcast(topic, "e", {"i": i}) for i in range(3)]
        for ref in refs:
            assert (await c.next_frame()).value == c.wire(jr, ref, topic, "phx_reply", OK_REPLY)
        for i in range(3):
            frame = await receiver.expect(is_broadcast)
            assert frame.broadcast_view() == {"type": "broadcast", "event": "e", "payload": {"i": i}}
        await c.assert_nothing_pending()  # the fan-out has happened: no self echo


@pytest.mark.parametrize("vsn", VSNS)
async def test_ack_and_self_together(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        jr = await c.join_ok(topic, {"broadcast": {"ack": True, "self": True}})
        ref = await c.broadcast(topic, "e", {"k": "v"})
        reply = await c.expect(reply_to(ref, topic))
        assert reply.value == c.wire(jr, ref, topic, "phx_reply", OK_REPLY)
        echo = await c.expect(is_broadcast)
        assert_text_delivery(c, echo, topic, {"type": "broadcast", "event": "e", "payload": {"k": "v"}})


@pytest.mark.compat(49)
async def test_broadcast_reaches_every_other_subscriber_but_not_other_topics(server: ServerProc) -> None:
    topic, other_topic = unique_topic(), unique_topic()
    async with (
        open_client(server, V2) as sender,
        open_client(server, V1) as r1,
        open_client(server, V2) as r2,
        open_client(server, V2) as bystander,
    ):
        for c in (sender, r1, r2):
            await c.join_ok(topic)
        await bystander.join_ok(other_topic)
        await sender.broadcast(topic, "e", {"x": 1})
        for r in (r1, r2):
            assert (await r.expect(is_broadcast)).broadcast_view()["payload"] == {"x": 1}
        await bystander.assert_nothing_pending()  # the fan-out has happened


# --- kind 3 (§1.6, §4.3) ----------------------------------------------------------------------


@pytest.mark.parametrize("receiver_vsn", VSNS)
@pytest.mark.compat(12, 53)
async def test_kind3_json_translated_for_receivers(server: ServerProc, receiver_vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, V2) as sender, open_client(server, receiver_vsn) as receiver:
        await sender.join_ok(topic)
        await receiver.join_ok(topic)
        await sender.send_kind3(topic, "cursor", b'{"x":1}', 1)
        frame = await receiver.expect(is_broadcast)
        assert_user_broadcast_delivery(receiver, frame, topic, "cursor", {"x": 1})
        await sender.assert_nothing_pending()  # the fan-out has happened: no echo, no ack


@pytest.mark.compat(12, 13)
async def test_kind3_json_with_ack_and_self(server: ServerProc) -> None:
    topic = unique_topic()
    async with open_client(server, V2) as c:
        jr = await c.join_ok(topic, {"broadcast": {"ack": True, "self": True}})
        ref = await c.send_kind3(topic, "cursor", b'{"x":1,"y":"two"}', 1)
        reply = await c.expect(reply_to(ref, topic))
        # The ack is a text reply on the header's ref, never a binary kind-1 frame (§1.6).
        assert not reply.is_binary
        assert reply.value == [jr, ref, topic, "phx_reply", OK_REPLY]
        echo = await c.expect(is_broadcast)
        assert_user_broadcast_delivery(c, echo, topic, "cursor", {"x": 1, "y": "two"})


@pytest.mark.compat(14, 54)
@pytest.mark.compat(13, note="every raw-client socket is also checked on close (`rawclient.check_binary_kinds`)")
async def test_kind3_binary_reaches_v2_as_kind4_encoding0_and_skips_v1(server: ServerProc) -> None:
    topic = unique_topic("salle-é")  # multi-byte topic: lengths are UTF-8 bytes (§1.6)
    data = bytes(range(256)) + b"\x00\xff"
    async with (
        open_client(server, V2) as sender,
        open_client(server, V2) as v2,
        open_client(server, V1) as v1,
    ):
        for c in (sender, v2, v1):
            await c.join_ok(topic)
        await sender.send_kind3(topic, "fichier-ñ", data, 0)
        frame = await v2.expect(is_broadcast)
        assert frame.raw == kind4(topic, "fichier-ñ", data, 0)
        # V1 receiver still gets later JSON traffic on the same topic, and nothing before it.
        await sender.send_kind3(topic, "after", b'{"ok":true}', 1)
        frame = await v1.assert_nothing_before(user_broadcast("after", topic))
        assert_user_broadcast_delivery(v1, frame, topic, "after", {"ok": True})


async def test_kind3_with_null_refs_and_empty_payload(server: ServerProc) -> None:
    topic = unique_topic()
    async with open_client(server, V2) as sender, open_client(server, V2) as receiver:
        await sender.join_ok(topic)
        await receiver.join_ok(topic)
        # join_ref absent (length 0) is still routed to the joined channel (§2.4 leniency).
        await sender.send_kind3(topic, "empty", b"", 0, join_ref=None)
        frame = await receiver.expect(is_broadcast)
        assert frame.raw == kind4(topic, "empty", b"", 0)


@pytest.mark.compat(20)
async def test_kind3_on_unjoined_topic_gets_unmatched_topic(server: ServerProc) -> None:
    topic = unique_topic("nope")
    async with open_client(server, V2) as c:
        ref = await c.send_kind3(topic, "e", b"{}", 1, join_ref="1")
        frame = await c.next_frame()
        assert frame.value == [None, ref, topic, "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}]


# --- payload size (§4.5, checklist 58) ------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(58)
async def test_oversize_broadcast_with_ack_is_refused_and_not_delivered(server_factory: Any, vsn: str) -> None:
    srv = server_factory(REALTIME_MAX_PAYLOAD_SIZE_IN_KB="1")  # limit 1500 bytes
    topic = unique_topic()
    async with open_client(srv, vsn) as c, open_client(srv, V2) as receiver:
        jr = await c.join_ok(topic, {"broadcast": {"ack": True, "self": True}})
        await receiver.join_ok(topic)
        ref = await c.broadcast(topic, "big", {"data": "x" * 3000})
        frame = await c.expect(reply_to(ref, topic))
        assert frame.value == c.wire(jr, ref, topic, "phx_reply", {"status": "error", "response": "payload_size_exceeded"})
        # A small message still goes through on the same channel, with nothing of the big one
        # before it: not to the receiver, and no self echo either.
        ref = await c.broadcast(topic, "small", {"data": "x" * 100})
        assert (await c.expect(reply_to(ref, topic))).value == c.wire(jr, ref, topic, "phx_reply", OK_REPLY)
        await receiver.assert_nothing_before(user_broadcast("small", topic))
        await c.assert_nothing_before(user_broadcast("small", topic))


@pytest.mark.compat(58)
async def test_oversize_kind3_with_ack_is_refused(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_PAYLOAD_SIZE_IN_KB="1")
    topic = unique_topic()
    async with open_client(srv, V2) as c, open_client(srv, V2) as receiver:
        jr = await c.join_ok(topic, {"broadcast": {"ack": True}})
        await receiver.join_ok(topic)
        ref = await c.send_kind3(topic, "big", json.dumps({"data": "y" * 3000}).encode(), 1)
        frame = await c.expect(reply_to(ref, topic))
        assert frame.value == [jr, ref, topic, "phx_reply", {"status": "error", "response": "payload_size_exceeded"}]
        ref = await c.send_kind3(topic, "small", b'{"ok":1}', 1)
        assert (await c.expect(reply_to(ref, topic))).value == [jr, ref, topic, "phx_reply", OK_REPLY]
        await receiver.assert_nothing_before(user_broadcast("small", topic))


@pytest.mark.parametrize("vsn", VSNS)
async def test_unknown_event_on_joined_channel_gets_no_reply(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c, open_client(server, V2) as other:
        await c.join_ok(topic, {"broadcast": {"ack": True, "self": True}})
        await other.join_ok(topic)
        await c.push(topic, "custom_event", {"a": 1})
        # A broadcast sent after it is acked and delivered; nothing came of the custom event.
        ref = await c.broadcast(topic, "marker", {})
        await c.expect(reply_to(ref, topic))
        await c.assert_nothing_before(user_broadcast("marker", topic))
        await other.assert_nothing_before(user_broadcast("marker", topic))
        await c.assert_nothing_pending()


async def test_kind3_with_invalid_json_is_dropped(server: ServerProc) -> None:
    # §4.1: a drop-in SHOULD drop encoding-1 frames whose payload is not valid JSON.
    topic = unique_topic()
    async with open_client(server, V2) as sender, open_client(server, V1) as v1, open_client(server, V2) as v2:
        for c in (sender, v1, v2):
            await c.join_ok(topic)
        await sender.send_kind3(topic, "broken", b'{"x":', 1)
        await sender.send_kind3(topic, "marker", b'{"x":1}', 1)
        for c in (v1, v2):
            await c.assert_nothing_before(user_broadcast("marker", topic))
        await sender.assert_nothing_pending()
