"""Untrusted JSON: bounded nesting, integers beyond 64 bits relayed verbatim."""

from __future__ import annotations

import orjson
import pytest

from realtime_channels.errors import DecodeError, PayloadTooDeep
from realtime_channels.protocol import jsonexact
from realtime_channels.protocol.codec import Message, Vsn, decode_binary, decode_text, encode


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [1, 50, jsonexact.MAX_DEPTH])
def test_nesting_up_to_the_limit_is_accepted_and_can_be_sent_on(depth: int) -> None:
    value = jsonexact.loads(nested(depth))
    assert orjson.dumps(value).decode() == nested(depth)


@pytest.mark.parametrize("depth", [jsonexact.MAX_DEPTH + 1, 255, 600, 1023, 1024, 1025, 3000])
def test_deeper_nesting_is_refused(depth: int) -> None:
    with pytest.raises(jsonexact.JsonError, match=f"nested more than {jsonexact.MAX_DEPTH} levels deep"):
        jsonexact.loads(nested(depth))
    with pytest.raises(jsonexact.JsonError):
        jsonexact.loads(nested(depth).encode())


def test_many_brackets_side_by_side_are_not_depth() -> None:
    flat = "[" + ",".join(["[]"] * 5000) + "]"
    assert len(jsonexact.loads(flat)) == 5000
    assert jsonexact.loads('{"a": "' + "[" * 5000 + '"}') == {"a": "[" * 5000}


@pytest.mark.parametrize("number", [
    "18446744073709551616", "-9223372036854775809", "123456789012345678901234567890",
    "-99999999999999999999999",
])
def test_integers_beyond_64_bits_are_written_back_verbatim(number: str) -> None:
    text = '{"n":' + number + ',"list":[' + number + ',1],"s":"' + number + '"}'
    value = jsonexact.loads(text)
    assert orjson.dumps(value).decode() == text


@pytest.mark.parametrize("number", ["18446744073709551615", "-9223372036854775808", "1234567890123456789"])
def test_integers_within_64_bits_stay_integers(number: str) -> None:
    assert jsonexact.loads("[" + number + "]") == [int(number)]


def test_a_frame_full_of_18_digit_runs_stays_on_the_fast_path_and_exact() -> None:
    """Runs of 18 digits are not long integers: the frame is orjson's alone, values unchanged;
    one 19-digit run among them is found wherever it is."""
    values = ["111111111111111111"] * 50_000
    assert jsonexact.loads("[" + ",".join(values) + "]") == [111111111111111111] * 50_000
    mixed = "[" + ",".join(values) + ",18446744073709551616]"
    parsed = jsonexact.loads(mixed)
    assert parsed[:-1] == [111111111111111111] * 50_000
    assert orjson.dumps(parsed[-1]) == b"18446744073709551616"


def test_invalid_json_is_refused() -> None:
    for text in ("", "{", "[1,]", "NaN", '{"a":1}x'):
        with pytest.raises(jsonexact.JsonError, match="not valid JSON"):
            jsonexact.loads(text)


@pytest.mark.parametrize("vsn", list(Vsn))
def test_frames_relay_big_integers_exactly(vsn: Vsn) -> None:
    payload = '{"type":"broadcast","event":"e","payload":{"id":18446744073709551616}}'
    text = (f'{{"topic":"realtime:r","event":"broadcast","payload":{payload},"ref":"1"}}' if vsn is Vsn.V1
            else f'[null,"1","realtime:r","broadcast",{payload}]')
    msg = decode_text(vsn, text)
    out = encode(vsn, Message(msg.topic, msg.event, msg.payload, msg.ref, msg.join_ref))
    assert "18446744073709551616" in out and "e+19" not in out


@pytest.mark.parametrize("vsn", list(Vsn))
def test_frames_nested_too_deeply_are_refused(vsn: Vsn) -> None:
    deep = nested(200)
    text = (f'{{"topic":"realtime:r","event":"broadcast","payload":{deep},"ref":"1"}}' if vsn is Vsn.V1
            else f'[null,"1","realtime:r","broadcast",{deep}]')
    with pytest.raises(DecodeError, match="nested more than"):
        decode_text(vsn, text)


def test_binary_json_payload_nested_too_deeply_is_refused() -> None:
    # (metadata is at most 255 bytes long, so it cannot nest beyond the limit)
    def kind3(meta: bytes, payload: bytes) -> bytes:
        topic, event = b"realtime:r", b"e"
        return bytes([3, 0, 1, len(topic), len(event), len(meta), 1]) + b"1" + topic + event + meta + payload

    deep = nested(200).encode()
    with pytest.raises(PayloadTooDeep) as info:  # answered on the header's ref (protocol.md §2.4)
        decode_binary(Vsn.V2, kind3(b"", deep))
    assert (info.value.topic, info.value.ref) == ("realtime:r", "1")
    assert decode_binary(Vsn.V2, kind3(b"", b'{"n":18446744073709551616}')).data == b'{"n":18446744073709551616}'
