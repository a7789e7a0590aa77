"""Envelope serialization between nodes (pubsub/wire.py): every field round-trips exactly."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from realtime_channels.protocol import jsonexact
from realtime_channels.protocol.codec import Broadcast
from realtime_channels.pubsub import Envelope
from realtime_channels.pubsub.wire import (
    NO_SENDER,
    WireError,
    decode_envelope,
    encode_envelope,
    read_header,
)


def roundtrip(env: Envelope) -> Envelope:
    return decode_envelope(encode_envelope(env))


ENVELOPES = {
    "text-broadcast": Envelope(
        "pub:room", "node-a",
        broadcast=Broadcast("realtime:room", payload={"type": "broadcast", "event": "e",
                                                      "payload": {"ü": [1, 2.5, None, True, "x"]}}),
    ),
    "user-json": Envelope("pub:room", "n", broadcast=Broadcast("realtime:room", event="cursor", data=b'{"x":1}')),
    "user-binary-all-bytes": Envelope(
        "pub:room", "n", broadcast=Broadcast("realtime:room", event="blob", data=bytes(range(256)) * 3, binary=True),
    ),
    "meta": Envelope(
        "priv:room", "n", broadcast=Broadcast("realtime:room", event="db", data=b'{"id":"r1"}', meta={"id": "r1"}),
    ),
    "empty-event-and-data": Envelope("pub:r", "n", broadcast=Broadcast("realtime:r", event="", data=b"")),
    "empty-payload-object": Envelope("pub:r", "n", broadcast=Broadcast("realtime:r", payload={})),
    "presence": Envelope(
        "pub:room", "n",
        control={"joins": {"k": {"metas": [{"phx_ref": "F1", "u": "alice"}]}}, "leaves": {}},
    ),
    "empty-presence": Envelope("pub:room", "n", control={}),
    "neither": Envelope("pub:room", "n"),
    "unicode-names": Envelope("pub:ρoom:🚀", "nöde", broadcast=Broadcast("realtime:ρoom:🚀", payload=[1])),
    "empty-names": Envelope("", "", broadcast=Broadcast("")),
}


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_envelope_round_trips_unchanged(name: str) -> None:
    env = ENVELOPES[name]
    assert roundtrip(env) == env


def test_integers_beyond_64_bits_and_the_deepest_accepted_payload_cross_nodes_verbatim() -> None:
    """A presence payload as a client sent it (big integers as exact-digit fragments, nested as
    deep as a frame may be) comes back with the same digits, even wrapped in a state answer's
    extra levels, and can be written again."""
    big = jsonexact.loads('{"n":18446744073709551616,"neg":-123456789012345678901234567890,"ok":1}')
    deepest = jsonexact.loads("[" * jsonexact.MAX_DEPTH + "]" * jsonexact.MAX_DEPTH)
    control = {"op": "state", "entries": [["pub:room", ["node", 1, "t"], "k", {"p": big, "d": deepest}]]}
    env = Envelope("__cluster", "n", control=control,
                   broadcast=Broadcast("realtime:room", payload={"payload": big}, meta={"id": big}))
    got = roundtrip(env)
    assert got.control is not None and got.broadcast is not None
    assert orjson.dumps(got.control) == orjson.dumps(control)
    assert orjson.dumps(got.broadcast.payload) == b'{"payload":' + orjson.dumps(big) + b"}"
    assert orjson.dumps(got.broadcast.meta) == b'{"id":' + orjson.dumps(big) + b"}"
    assert b"18446744073709551616" in orjson.dumps(big)


def test_payload_none_and_event_none_stay_none() -> None:
    b = roundtrip(Envelope("s", "o", broadcast=Broadcast("t"))).broadcast
    assert b is not None
    assert b.payload is None and b.event is None and b.meta is None and b.data == b"" and b.binary is False


def test_binary_flag_and_data_bytes_are_exact() -> None:
    data = b"\x00\xff\x80\r\n" + bytes(range(256))
    b = roundtrip(Envelope("s", "o", broadcast=Broadcast("t", event="e", data=data, binary=True))).broadcast
    assert b is not None and b.binary is True and b.data == data and type(b.data) is bytes


EXCLUDES: list[Any] = [
    None,
    (7, "realtime:room"),  # the node's (conn_id, topic)
    (0, ""),
    "probe-1",
    42,
    -(2**63),
    2**63 - 1,
    2**80,  # beyond 64 bits still exact
    -(2**70),
    True,
    False,
    1.5,
    b"\x00\x01",
    (),
    ((1, ("a", None)), True, 2.0),
]


@pytest.mark.parametrize("exclude", EXCLUDES, ids=repr)
def test_exclude_round_trips_with_its_type(exclude: Any) -> None:
    env = Envelope("s", "o", broadcast=Broadcast("t", payload={"a": 1}), exclude=exclude)
    got = roundtrip(env).exclude
    assert got == exclude
    assert type(got) is type(exclude)
    if isinstance(exclude, tuple):  # nested tuples stay tuples, bools stay bools, all the way down
        assert repr(got) == repr(exclude)


def test_exclude_tuple_matches_as_dict_key_like_the_hub_does() -> None:
    sent = (12, "realtime:room")
    got = roundtrip(Envelope("s", "o", broadcast=Broadcast("t"), exclude=sent)).exclude
    assert {sent: "subscriber"}[got] == "subscriber"  # hashable and equal: the hub compares ids


@pytest.mark.parametrize("bad", [[1, "t"], {"a": 1}, {1, 2}, object()], ids=lambda v: type(v).__name__)
def test_exclude_that_cannot_cross_nodes_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError):
        encode_envelope(Envelope("s", "o", exclude=bad))


def test_payload_that_is_not_json_is_refused() -> None:
    with pytest.raises(TypeError):
        encode_envelope(Envelope("s", "o", broadcast=Broadcast("t", payload={"x": object()})))


def test_header_carries_sender_and_seq_without_decoding_the_body() -> None:
    sender = bytes(range(1, 9))
    data = encode_envelope(ENVELOPES["meta"], sender=sender, seq=2**40 + 5)
    assert read_header(data) == (sender, 2**40 + 5)
    assert read_header(encode_envelope(ENVELOPES["meta"])) == (NO_SENDER, 0)
    assert decode_envelope(data) == ENVELOPES["meta"]


def test_sender_must_be_eight_bytes() -> None:
    with pytest.raises(ValueError):
        encode_envelope(ENVELOPES["neither"], sender=b"short")


def test_encoding_is_compact() -> None:
    env = Envelope("pub:room", "abcdef012345", broadcast=Broadcast("realtime:room", event="e", data=b"{}"),
                   exclude=(3, "realtime:room"))
    data = encode_envelope(env)
    fields = len("pub:room") + len("abcdef012345") + len("realtime:room") * 2 + len("e") + len("{}")
    assert len(data) - fields <= 60  # fixed header + length prefixes + tags only


@pytest.mark.parametrize("cut", [0, 1, 10, 18, 25, -1])
def test_truncated_input_is_a_wire_error(cut: int) -> None:
    data = encode_envelope(ENVELOPES["meta"], seq=1)
    with pytest.raises(WireError):
        decode_envelope(data[:cut])


def test_trailing_bytes_are_a_wire_error() -> None:
    with pytest.raises(WireError):
        decode_envelope(encode_envelope(ENVELOPES["presence"]) + b"\x00")


def test_unknown_version_is_a_wire_error() -> None:
    data = bytearray(encode_envelope(ENVELOPES["presence"]))
    data[0] = 99
    with pytest.raises(WireError):
        decode_envelope(bytes(data))
    with pytest.raises(WireError):
        read_header(bytes(data))


def test_garbage_is_a_wire_error_not_a_crash() -> None:
    good = encode_envelope(ENVELOPES["user-binary-all-bytes"], seq=3)
    for i in range(18, len(good), 7):  # flip bytes after the header one at a time
        corrupt = good[:i] + bytes((good[i] ^ 0xFF,)) + good[i + 1 :]
        try:
            decode_envelope(corrupt)
        except WireError:
            continue  # the only acceptable failure
