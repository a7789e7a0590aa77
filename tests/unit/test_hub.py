"""Local fan-out (design.md §3 "Fan-out", protocol.md §4.3).

The subscribers are plain objects with a ``vsn`` and a ``write`` that records frames: the hub is
the pure core below the transports, so nothing here is a network boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from realtime_channels.hub import Hub
from realtime_channels.protocol.codec import Broadcast, Message, Vsn

TOPIC = "realtime:room1"
STREAM = "pub:room1"


@dataclass(eq=False)
class FakeSub:
    vsn: Vsn
    frames: list[bytes] = field(default_factory=list)

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)


def unframe(frame: bytes) -> tuple[int, bytes]:
    """Split a server frame (RFC 6455 §5.2, unmasked) into (opcode, payload)."""
    first, second = frame[0], frame[1]
    assert first & 0x80, "FIN must be set"
    assert not second & 0x80, "server frames are never masked"
    n, off = second & 0x7F, 2
    if n == 126:
        n, off = int.from_bytes(frame[2:4], "big"), 4
    elif n == 127:
        n, off = int.from_bytes(frame[2:10], "big"), 10
    payload = frame[off:]
    assert len(payload) == n
    return first & 0x0F, payload


def text_of(frame: bytes) -> Any:
    opcode, payload = unframe(frame)
    assert opcode == 1, "expected a text frame"
    return orjson.loads(payload)


def kind4(frame: bytes) -> tuple[str, str, bytes, int, bytes]:
    """Parse a kind-4 binary frame (§1.6) into (topic, event, meta, encoding, data)."""
    opcode, body = unframe(frame)
    assert opcode == 2, "expected a binary frame"
    assert body[0] == 4
    topic_len, event_len, meta_len, encoding = body[1], body[2], body[3], body[4]
    off = 5
    topic = body[off : off + topic_len].decode()
    off += topic_len
    event = body[off : off + event_len].decode()
    off += event_len
    meta = body[off : off + meta_len]
    off += meta_len
    return topic, event, meta, encoding, body[off:]


def hub_with(*subs: FakeSub, stream: str = STREAM) -> Hub:
    hub = Hub()
    for i, sub in enumerate(subs):
        hub.add(stream, ("conn", i), sub)
    return hub


TEXT = Broadcast(TOPIC, payload={"type": "broadcast", "event": "cursor", "payload": {"x": 1}, "extra": True})


# --- encode once ----------------------------------------------------------------------------


def test_all_v2_subscribers_receive_the_identical_bytes_object() -> None:
    subs = [FakeSub(Vsn.V2) for _ in range(5)]
    hub = hub_with(*subs)
    assert hub.fanout_broadcast(STREAM, TEXT) == 5
    first = subs[0].frames[0]
    assert all(len(s.frames) == 1 and s.frames[0] is first for s in subs)


def test_v1_and_v2_each_encoded_once_per_format() -> None:
    v1 = [FakeSub(Vsn.V1) for _ in range(3)]
    v2 = [FakeSub(Vsn.V2) for _ in range(3)]
    hub = hub_with(v1[0], v2[0], v1[1], v2[1], v1[2], v2[2])
    assert hub.fanout_broadcast(STREAM, TEXT) == 6
    assert all(s.frames[0] is v1[0].frames[0] for s in v1)
    assert all(s.frames[0] is v2[0].frames[0] for s in v2)
    assert v1[0].frames[0] != v2[0].frames[0]


def test_text_broadcast_frames_per_format() -> None:
    v1, v2 = FakeSub(Vsn.V1), FakeSub(Vsn.V2)
    hub_with(v1, v2).fanout_broadcast(STREAM, TEXT)
    # V1: an object with exactly topic/event/payload/ref (checklist 9); payload relayed verbatim.
    assert text_of(v1.frames[0]) == {"topic": TOPIC, "event": "broadcast", "payload": TEXT.payload, "ref": None}
    assert text_of(v2.frames[0]) == [None, None, TOPIC, "broadcast", TEXT.payload]


def test_user_json_broadcast_is_kind4_for_v2_and_object_for_v1() -> None:
    v1, v2 = FakeSub(Vsn.V1), FakeSub(Vsn.V2)
    b = Broadcast(TOPIC, event="cursor", data=b'{"x":1}', binary=False)
    assert hub_with(v1, v2).fanout_broadcast(STREAM, b) == 2
    assert kind4(v2.frames[0]) == (TOPIC, "cursor", b"", 1, b'{"x":1}')
    assert text_of(v1.frames[0]) == {
        "topic": TOPIC,
        "event": "broadcast",
        "payload": {"event": "cursor", "payload": {"x": 1}, "type": "broadcast"},
        "ref": None,
    }


def test_binary_broadcast_skips_v1_subscribers() -> None:
    v1a, v2a, v1b, v2b = FakeSub(Vsn.V1), FakeSub(Vsn.V2), FakeSub(Vsn.V1), FakeSub(Vsn.V2)
    hub = hub_with(v1a, v2a, v1b, v2b)
    data = b"\x00\x01\xfe\xff"
    assert hub.fanout_broadcast(STREAM, Broadcast(TOPIC, event="blob", data=data, binary=True)) == 2
    assert v1a.frames == [] and v1b.frames == []
    assert v2a.frames[0] is v2b.frames[0]
    assert kind4(v2a.frames[0]) == (TOPIC, "blob", b"", 0, data)


def test_large_frame_uses_extended_length() -> None:
    v2 = FakeSub(Vsn.V2)
    big = Broadcast(TOPIC, payload={"blob": "x" * 70_000})
    hub_with(v2).fanout_broadcast(STREAM, big)
    assert text_of(v2.frames[0])[4] == big.payload


# --- exclude, streams -----------------------------------------------------------------------


def test_exclude_skips_only_that_subscriber() -> None:
    a, b, c = FakeSub(Vsn.V2), FakeSub(Vsn.V1), FakeSub(Vsn.V2)
    hub = Hub()
    hub.add(STREAM, "a", a)
    hub.add(STREAM, "b", b)
    hub.add(STREAM, "c", c)
    assert hub.fanout_broadcast(STREAM, TEXT, exclude="a") == 2
    assert a.frames == [] and len(b.frames) == 1 and len(c.frames) == 1
    assert hub.fanout_broadcast(STREAM, TEXT, exclude="not-a-subscriber") == 3


def test_other_streams_are_not_delivered() -> None:
    pub, priv = FakeSub(Vsn.V2), FakeSub(Vsn.V2)
    hub = Hub()
    hub.add("pub:room1", "x", pub)
    hub.add("priv:room1", "y", priv)
    assert hub.fanout_broadcast("pub:room1", TEXT) == 1
    assert len(pub.frames) == 1 and priv.frames == []
    assert hub.fanout_broadcast("pub:nobody", TEXT) == 0


def test_same_sid_on_two_streams_is_independent() -> None:
    sub = FakeSub(Vsn.V2)
    hub = Hub()
    hub.add("pub:a", "s", sub)
    hub.add("pub:b", "s", sub)
    assert hub.remove("pub:a", "s") is True
    assert hub.count("pub:b") == 1
    hub.fanout_broadcast("pub:a", TEXT)
    assert sub.frames == []


# --- add / remove flags ---------------------------------------------------------------------


def test_add_reports_first_local_subscriber() -> None:
    hub = Hub()
    assert hub.add(STREAM, 1, FakeSub(Vsn.V2)) is True
    assert hub.add(STREAM, 2, FakeSub(Vsn.V1)) is False
    assert hub.add("pub:other", 1, FakeSub(Vsn.V1)) is True
    assert hub.count(STREAM) == 2


def test_re_adding_same_sid_replaces_and_is_not_first() -> None:
    old, new = FakeSub(Vsn.V2), FakeSub(Vsn.V1)
    hub = Hub()
    hub.add(STREAM, 1, old)
    assert hub.add(STREAM, 1, new) is False
    assert hub.count(STREAM) == 1
    hub.fanout_broadcast(STREAM, TEXT)
    assert old.frames == [] and len(new.frames) == 1


def test_remove_reports_last_local_subscriber() -> None:
    hub = Hub()
    hub.add(STREAM, 1, FakeSub(Vsn.V2))
    hub.add(STREAM, 2, FakeSub(Vsn.V2))
    assert hub.remove(STREAM, 1) is False
    assert hub.count(STREAM) == 1
    assert hub.remove(STREAM, 2) is True
    assert hub.count(STREAM) == 0
    # Removing again, or from an unknown stream, is not "last" a second time.
    assert hub.remove(STREAM, 2) is False
    assert hub.remove("pub:never", 1) is False
    # After the last one left, the next add is "first" again.
    assert hub.add(STREAM, 3, FakeSub(Vsn.V2)) is True


def test_removed_subscriber_gets_nothing() -> None:
    a, b = FakeSub(Vsn.V2), FakeSub(Vsn.V2)
    hub = Hub()
    hub.add(STREAM, "a", a)
    hub.add(STREAM, "b", b)
    hub.remove(STREAM, "a")
    assert hub.fanout_broadcast(STREAM, TEXT) == 1
    assert a.frames == [] and len(b.frames) == 1


# --- fanout_message -------------------------------------------------------------------------


DIFF = Message(TOPIC, "presence_diff", {"joins": {"k": {"metas": [{"phx_ref": "r1", "u": 1}]}}, "leaves": {}})


def test_fanout_message_reaches_every_subscriber_encoded_once_per_format() -> None:
    v1 = [FakeSub(Vsn.V1) for _ in range(2)]
    v2 = [FakeSub(Vsn.V2) for _ in range(3)]
    hub = hub_with(*v1, *v2)
    assert hub.fanout_message(STREAM, DIFF) == 5
    assert all(s.frames[0] is v1[0].frames[0] for s in v1)
    assert all(s.frames[0] is v2[0].frames[0] for s in v2)
    assert text_of(v1[0].frames[0]) == {"topic": TOPIC, "event": "presence_diff", "payload": DIFF.payload, "ref": None}
    assert text_of(v2[0].frames[0]) == [None, None, TOPIC, "presence_diff", DIFF.payload]


def test_fanout_message_to_empty_stream() -> None:
    assert Hub().fanout_message(STREAM, DIFF) == 0


def test_delivery_order_follows_fanout_order() -> None:
    sub = FakeSub(Vsn.V2)
    hub = hub_with(sub)
    for i in range(10):
        hub.fanout_broadcast(STREAM, Broadcast(TOPIC, payload={"i": i}))
    assert [text_of(f)[4]["i"] for f in sub.frames] == list(range(10))
