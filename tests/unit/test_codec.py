"""Codec tests: golden V1/V2 frames and the worked binary example of protocol.md §1.6."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from realtime_channels.protocol.codec import (
    BinaryBroadcastPush,
    Broadcast,
    DecodeError,
    Message,
    Vsn,
    decode_binary,
    decode_text,
    encode,
    encode_broadcast,
    encode_kind4,
    parse_vsn,
)
from realtime_channels.errors import PayloadTooDeep

# protocol.md §1.6 worked example, byte for byte.
KIND3_GOLDEN = bytes.fromhex(
    "03 01 01 0e 06 00 01"
    "31"
    "32"
    "72 65 61 6c 74 69 6d 65 3a 72 6f 6f 6d 31"
    "63 75 72 73 6f 72"
    "7b 22 78 22 3a 31 7d"
)
KIND4_GOLDEN = bytes.fromhex(
    "04 0e 06 00 01"
    "72 65 61 6c 74 69 6d 65 3a 72 6f 6f 6d 31"
    "63 75 72 73 6f 72"
    "7b 22 78 22 3a 31 7d"
)


def kind3(
    join_ref: bytes = b"1",
    ref: bytes = b"2",
    topic: bytes = b"realtime:room1",
    event: bytes = b"cursor",
    meta: bytes = b"",
    encoding: int = 1,
    data: bytes = b'{"x":1}',
    kind: int = 3,
) -> bytes:
    header = bytes((kind, len(join_ref), len(ref), len(topic), len(event), len(meta), encoding))
    return header + join_ref + ref + topic + event + meta + data


# --- vsn (§1.2) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, Vsn.V1),
        ("1.0.0", Vsn.V1),
        ("1.0.5", Vsn.V1),
        ("1.0.42", Vsn.V1),
        ("2.0.0", Vsn.V2),
        ("2.0.7", Vsn.V2),
        ("3.0.0", None),
        ("1.1.0", None),
        ("2.1.0", None),
        ("1.0", None),
        ("", None),
        ("abc", None),
        ("1.0.-1", None),
        (" 1.0.0", None),
        ("1.0.0 ", None),
        ("0.0.0", None),
    ],
)
def test_parse_vsn(raw: str | None, expected: Vsn | None) -> None:
    assert parse_vsn(raw) is expected


# --- text decoding (§1.5, §2.4) -------------------------------------------------------------


def test_decode_v1_python_heartbeat() -> None:
    text = '{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}'
    assert decode_text(Vsn.V1, text) == Message("phoenix", "heartbeat", {}, None, None)


def test_decode_v1_join_with_refs() -> None:
    text = '{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"1","join_ref":"1"}'
    msg = decode_text(Vsn.V1, text.encode())
    assert msg == Message("realtime:room1", "phx_join", {"config": {}}, "1", "1")


def test_decode_v1_join_ref_optional() -> None:
    msg = decode_text(Vsn.V1, '{"topic":"t","event":"e","payload":null,"ref":"3"}')
    assert msg.join_ref is None
    assert msg.ref == "3"
    assert msg.payload is None


def test_decode_v2_heartbeat() -> None:
    msg = decode_text(Vsn.V2, '[null,"7","phoenix","heartbeat",{}]')
    assert msg == Message("phoenix", "heartbeat", {}, "7", None)


def test_decode_v2_extra_trailing_elements_ignored() -> None:
    msg = decode_text(Vsn.V2, '["1","2","realtime:a","broadcast",{"k":1},"extra",7]')
    assert msg == Message("realtime:a", "broadcast", {"k": 1}, "2", "1")


def test_decode_numeric_refs_are_stringified() -> None:
    assert decode_text(Vsn.V2, '[1,22,"t","e",{}]') == Message("t", "e", {}, "22", "1")
    v1 = decode_text(Vsn.V1, '{"topic":"t","event":"e","payload":{},"ref":5,"join_ref":6}')
    assert (v1.ref, v1.join_ref) == ("5", "6")


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{",
        "",
        '["1","2","t","e"]',  # too short
        '{"topic":"t","event":"e","payload":{},"ref":null}',  # object on a V2 socket
        '"just a string"',
        '[null,"1",5,"e",{}]',  # topic not a string
        '[null,"1","t",null,{}]',  # event not a string
        '[null,true,"t","e",{}]',  # bool ref
        '[{},"1","t","e",{}]',  # object join_ref
        '[null,["1"],"t","e",{}]',  # array ref
    ],
)
def test_decode_v2_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        decode_text(Vsn.V2, text)


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        '["1","1","t","e",{}]',  # array on a V1 socket
        '{"event":"e","payload":{},"ref":null}',  # no topic
        '{"topic":"t","payload":{},"ref":null}',  # no event
        '{"topic":"t","event":"e","ref":null}',  # no payload
        '{"topic":"t","event":"e","payload":{}}',  # no ref key at all
        '{"topic":1,"event":"e","payload":{},"ref":null}',
        '{"topic":"t","event":false,"payload":{},"ref":null}',
        '{"topic":"t","event":"e","payload":{},"ref":false}',
        '{"topic":"t","event":"e","payload":{},"ref":null,"join_ref":{}}',
    ],
)
def test_decode_v1_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        decode_text(Vsn.V1, text)


def test_decode_error_is_value_error() -> None:
    assert issubclass(DecodeError, ValueError)


# --- binary decoding (§1.6) ----------------------------------------------------------------


def test_decode_kind3_worked_example() -> None:
    assert kind3() == KIND3_GOLDEN  # the helper reproduces the spec bytes
    assert decode_binary(Vsn.V2, KIND3_GOLDEN) == BinaryBroadcastPush(
        join_ref="1",
        ref="2",
        topic="realtime:room1",
        event="cursor",
        metadata=None,
        data=b'{"x":1}',
        binary=False,
    )


def test_decode_kind3_empty_refs_are_none() -> None:
    push = decode_binary(Vsn.V2, kind3(join_ref=b"", ref=b""))
    assert push.join_ref is None
    assert push.ref is None


def test_decode_kind3_metadata_and_raw_bytes() -> None:
    raw = bytes(range(256))
    push = decode_binary(Vsn.V2, kind3(meta=b'{"persist":true}', encoding=0, data=raw))
    assert push.metadata == {"persist": True}
    assert push.binary is True
    assert push.data == raw


def test_decode_kind3_unicode_fields() -> None:
    topic = "realtime:café☕".encode()
    event = "ünï".encode()
    push = decode_binary(Vsn.V2, kind3(topic=topic, event=event))
    assert push.topic == "realtime:café☕"
    assert push.event == "ünï"


def test_decode_kind3_empty_binary_payload() -> None:
    push = decode_binary(Vsn.V2, kind3(encoding=0, data=b""))
    assert push.data == b""
    assert push.binary is True


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x03\x01\x01",  # header truncated
        KIND3_GOLDEN[:10],  # strings truncated
        kind3(kind=0),
        kind3(kind=1),
        kind3(kind=2),
        kind3(kind=4),
        kind3(kind=9),
        kind3(encoding=2),
        kind3(meta=b"[1,2]"),  # metadata not an object
        kind3(meta=b'"x"'),
        kind3(meta=b"{bad"),  # metadata not JSON
        kind3(data=b"{not json"),  # encoding 1 must carry JSON (§4.1 SHOULD)
        kind3(data=b""),  # empty is not JSON either
        kind3(topic=b"\xff\xfe"),  # invalid UTF-8
    ],
)
def test_decode_binary_errors(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_binary(Vsn.V2, frame)


def test_decode_binary_deep_json_payload_is_refused_with_its_header_refs() -> None:
    """§2.4: the topic and ref of a kind-3 push are in its header, so a JSON payload nested too
    deeply is answered on that ref (a raw-bytes payload is never parsed)."""
    deep = b"[" * 200 + b"]" * 200
    with pytest.raises(PayloadTooDeep) as info:
        decode_binary(Vsn.V2, kind3(join_ref=b"1", ref=b"2", data=deep))
    assert (info.value.topic, info.value.ref, info.value.join_ref) == ("realtime:room1", "2", "1")
    with pytest.raises(PayloadTooDeep) as no_ref:
        decode_binary(Vsn.V2, kind3(join_ref=b"", ref=b"", data=b"[" * 2000 + b"]" * 2000))
    assert (no_ref.value.ref, no_ref.value.join_ref) == (None, None)
    assert decode_binary(Vsn.V2, kind3(encoding=0, data=deep)).data == deep


def test_decode_binary_on_v1_socket() -> None:
    with pytest.raises(DecodeError):
        decode_binary(Vsn.V1, KIND3_GOLDEN)


# --- text encoding (§1.5) ------------------------------------------------------------------

JOIN_REPLY = Message(
    topic="realtime:room1",
    event="phx_reply",
    payload={"status": "ok", "response": {"postgres_changes": []}},
    ref="1",
    join_ref="1",
)


@pytest.mark.compat(9)
def test_encode_v1_golden_never_join_ref() -> None:
    assert encode(Vsn.V1, JOIN_REPLY) == (
        '{"topic":"realtime:room1","event":"phx_reply",'
        '"payload":{"status":"ok","response":{"postgres_changes":[]}},"ref":"1"}'
    )


def test_encode_v2_golden() -> None:
    assert encode(Vsn.V2, JOIN_REPLY) == (
        '["1","1","realtime:room1","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]'
    )


def test_encode_heartbeat_reply_null_refs() -> None:
    msg = Message("phoenix", "phx_reply", {"status": "ok", "response": {}}, None, None)
    assert encode(Vsn.V1, msg) == (
        '{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":null}'
    )
    assert encode(Vsn.V2, msg) == '[null,null,"phoenix","phx_reply",{"status":"ok","response":{}}]'


def test_encode_decode_round_trip_unicode() -> None:
    msg = Message("realtime:ça", "broadcast", {"t": "héllo ☕"}, "9", "3")
    assert decode_text(Vsn.V2, encode(Vsn.V2, msg)) == msg
    back = decode_text(Vsn.V1, encode(Vsn.V1, msg))
    assert back == Message("realtime:ça", "broadcast", {"t": "héllo ☕"}, "9", None)


# --- broadcast encoding (§1.6, §4.3) -----------------------------------------------------


def test_text_form_broadcast_golden() -> None:
    payload = {"type": "broadcast", "event": "cursor", "payload": {"x": 1}, "extra": [1]}
    b = Broadcast(topic="realtime:room1", payload=payload)
    assert encode_broadcast(Vsn.V2, b) == (
        '[null,null,"realtime:room1","broadcast",'
        '{"type":"broadcast","event":"cursor","payload":{"x":1},"extra":[1]}]'
    )
    assert encode_broadcast(Vsn.V1, b) == (
        '{"topic":"realtime:room1","event":"broadcast",'
        '"payload":{"type":"broadcast","event":"cursor","payload":{"x":1},"extra":[1]},"ref":null}'
    )


@pytest.mark.compat(14)
def test_user_form_v2_is_kind4_worked_example() -> None:
    b = Broadcast(topic="realtime:room1", event="cursor", data=b'{"x":1}')
    assert encode_broadcast(Vsn.V2, b) == KIND4_GOLDEN


def test_user_form_v1_golden() -> None:
    b = Broadcast(topic="realtime:room1", event="cursor", data=b'{"x":1}')
    assert encode_broadcast(Vsn.V1, b) == (
        '{"topic":"realtime:room1","event":"broadcast",'
        '"payload":{"event":"cursor","payload":{"x":1},"type":"broadcast"},"ref":null}'
    )


def test_kind3_to_kind4_relay() -> None:
    push = decode_binary(Vsn.V2, KIND3_GOLDEN)
    b = Broadcast(topic=push.topic, event=push.event, data=push.data, binary=push.binary)
    assert encode_broadcast(Vsn.V2, b) == KIND4_GOLDEN


def test_user_form_with_meta() -> None:
    meta = {"id": "6f0b1a9e-0000-4000-8000-000000000001"}
    b = Broadcast(topic="realtime:r", event="e", data=b'{"a":1}', meta=meta)
    frame = encode_broadcast(Vsn.V2, b)
    assert isinstance(frame, bytes)
    meta_json = orjson.dumps(meta)
    assert frame[:5] == bytes((4, 10, 1, len(meta_json), 1))
    assert frame[5:] == b"realtime:r" + b"e" + meta_json + b'{"a":1}'
    assert encode_broadcast(Vsn.V1, b) == (
        '{"topic":"realtime:r","event":"broadcast","payload":{"event":"e","payload":{"a":1},'
        '"type":"broadcast","meta":{"id":"6f0b1a9e-0000-4000-8000-000000000001"}},"ref":null}'
    )


def test_binary_user_form() -> None:
    raw = b"\x00\x01\xfe\xff"
    b = Broadcast(topic="realtime:r", event="bin", data=raw, binary=True)
    assert encode_broadcast(Vsn.V2, b) == bytes((4, 10, 3, 0, 0)) + b"realtime:rbin" + raw
    assert encode_broadcast(Vsn.V1, b) is None  # §4.3: V1 cannot carry bytes


def test_fragment_relay_keeps_exact_bytes() -> None:
    data = b'{"a":1.10,"b":"\\u00e9","c":[ 1 ,2]}'
    b = Broadcast(topic="realtime:r", event="e", data=data)
    v1 = encode_broadcast(Vsn.V1, b)
    assert isinstance(v1, str)
    assert '"payload":{"a":1.10,"b":"\\u00e9","c":[ 1 ,2]}' in v1
    assert orjson.loads(v1)["payload"]["payload"] == {"a": 1.1, "b": "é", "c": [1, 2]}
    v2 = encode_broadcast(Vsn.V2, b)
    assert isinstance(v2, bytes)
    assert v2.endswith(data)


@pytest.mark.compat(14)
def test_kind4_lengths_count_utf8_bytes() -> None:
    topic = "realtime:☕☕"  # 9 + 2*3 = 15 bytes, 11 code points
    event = "é"  # 2 bytes
    frame = encode_kind4(topic, event, None, b"1", False)
    assert frame is not None
    assert frame[1] == 15
    assert frame[2] == 2
    assert frame[5 : 5 + 15].decode() == topic


def test_kind4_255_byte_limit() -> None:
    ok_topic = "realtime:" + "a" * (255 - 9)
    frame = encode_kind4(ok_topic, "e", None, b"{}", False)
    assert frame is not None
    assert frame[1] == 255
    assert encode_kind4(ok_topic + "a", "e", None, b"{}", False) is None
    # 128 two-byte characters = 256 bytes although only 128 code points
    assert encode_kind4("t", "é" * 128, None, b"{}", False) is None
    assert encode_kind4("t", "e", {"k": "v" * 300}, b"{}", False) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"topic": "realtime:" + "☕" * 90},  # 9 + 270 bytes
        {"event": "x" * 256},
        {"meta": {"id": "x" * 250}},
    ],
)
def test_oversize_user_form_falls_back_to_text_for_json(fields: dict[str, Any]) -> None:
    args: dict[str, Any] = {"topic": "realtime:r", "event": "e", "data": b'{"v":1.50}', **fields}
    b = Broadcast(**args)
    out = encode_broadcast(Vsn.V2, b)
    assert isinstance(out, str)
    assert '"payload":{"v":1.50}' in out
    inner: dict[str, Any] = {"type": "broadcast", "event": args["event"], "payload": {"v": 1.5}}
    if "meta" in args:
        inner["meta"] = args["meta"]
    assert orjson.loads(out) == [None, None, args["topic"], "broadcast", inner]
    assert encode_broadcast(Vsn.V2, Broadcast(**{**args, "binary": True, "data": b"\x00"})) is None


def test_oversize_topic_still_reaches_v1() -> None:
    b = Broadcast(topic="realtime:" + "t" * 300, event="e", data=b"{}")
    out = encode_broadcast(Vsn.V1, b)
    assert isinstance(out, str)
    assert orjson.loads(out)["payload"] == {"event": "e", "payload": {}, "type": "broadcast"}
