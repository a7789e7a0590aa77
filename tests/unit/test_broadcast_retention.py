"""Retained broadcasts are kept packed: replayed equal to what was published, and out of the
garbage collector's sight (so full collections do not grow with the retention window)."""

from __future__ import annotations

import gc
from decimal import Decimal

import orjson

from realtime_channels.protocol import jsonexact
from realtime_channels.protocol.codec import Broadcast
from realtime_channels.pubsub.memory import BroadcastRetention, pack, unpack
from realtime_channels.pubsub.retention import RetentionLimits

BIG = "123456789012345678901234567890"


def samples() -> list[Broadcast]:
    return [
        Broadcast("realtime:room", payload=jsonexact.loads(
            '{"type":"broadcast","event":"e","payload":{"n":' + BIG + ',"deep":[{"a":[1,2.5,null,true]}]}}')),
        Broadcast("realtime:room", event="move", data=b'{"x":1}', meta={"id": "7a0c"}),
        Broadcast("realtime:room", event="blob", data=b"\x00\xff", binary=True),
        Broadcast("realtime:room", payload={"type": "broadcast", "event": "e", "payload": {}}, meta={"id": "m1"}),
    ]


def test_a_packed_broadcast_unpacks_to_an_equal_one_with_exact_integers() -> None:
    for b in samples():
        packed, size = pack(b)
        back = unpack(packed)
        assert back.topic == b.topic and back.event == b.event and back.data == b.data
        assert back.binary == b.binary and back.meta == b.meta
        assert orjson.dumps(back.payload) == orjson.dumps(b.payload)  # the long integer's digits too
        assert size > 64
    assert BIG.encode() in orjson.dumps(unpack(pack(samples()[0])[0]).payload)


def test_packed_broadcasts_are_not_tracked_by_the_collector() -> None:
    kept = [pack(b)[0] for b in samples()]
    gc.collect()
    assert not any(gc.is_tracked(p) for p in kept)


def test_a_payload_json_cannot_carry_is_kept_as_it_is() -> None:
    odd = Broadcast("realtime:room", payload={"amount": Decimal("1.5")})
    packed, _ = pack(odd)
    assert unpack(packed) is odd


def test_history_replays_the_broadcasts_appended() -> None:
    ring = BroadcastRetention(RetentionLimits(window_s=60, max_messages=10))
    offsets = [ring.append("s", b, now=100.0) for b in samples()]
    assert [o for o, _ in offsets] == [1, 2, 3, 4]
    epoch = offsets[0][1]
    history, gap = ring.history("s", 2, epoch, now=101.0)
    assert gap is None
    assert [o for o, _ in history.entries] == [3, 4]
    assert [b.event for _, b in history.entries] == ["blob", None]
    assert history.entries[1][1].meta == {"id": "m1"}


def test_a_retained_broadcast_costs_its_size_not_an_allocator_block() -> None:
    import tracemalloc

    ring = BroadcastRetention(RetentionLimits(window_s=60, max_messages=10_000))
    payloads = [{"type": "broadcast", "event": "e", "payload": {"i": i, "pad": "x" * 32}} for i in range(2_000)]
    tracemalloc.start()
    try:
        for p in payloads:
            ring.append("s", Broadcast("realtime:room", payload=p), now=1.0)
        retained, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained / len(payloads) < 1_000  # orjson's output as it is would keep 4 KiB each
