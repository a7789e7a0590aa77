"""RFC 6455 §5.2 server frame tests: headers are parsed back independently of the builder."""

from __future__ import annotations

import pytest

from realtime_channels.protocol.wsframe import build_frame, build_text_frame


def parse_header(frame: bytes) -> tuple[bool, int, bool, int, bytes]:
    """Return (fin, opcode, masked, payload_len, payload) following RFC 6455 §5.2."""
    fin = bool(frame[0] & 0x80)
    rsv = frame[0] & 0x70
    assert rsv == 0
    opcode = frame[0] & 0x0F
    masked = bool(frame[1] & 0x80)
    length = frame[1] & 0x7F
    offset = 2
    if length == 126:
        length = int.from_bytes(frame[2:4], "big")
        offset = 4
    elif length == 127:
        length = int.from_bytes(frame[2:10], "big")
        assert length >> 63 == 0  # most significant bit must be 0
        offset = 10
    return fin, opcode, masked, length, frame[offset:]


@pytest.mark.parametrize(
    ("size", "header_len"),
    [(0, 2), (1, 2), (125, 2), (126, 4), (127, 4), (65535, 4), (65536, 10), (70000, 10)],
)
def test_binary_length_boundaries(size: int, header_len: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = build_frame(payload)
    fin, opcode, masked, length, body = parse_header(frame)
    assert (fin, opcode, masked) == (True, 2, False)
    assert length == size
    assert body == payload
    assert len(frame) == header_len + size


@pytest.mark.parametrize("size", [125, 126, 65535, 65536])
def test_text_length_boundaries(size: int) -> None:
    text = "a" * size
    fin, opcode, masked, length, body = parse_header(build_frame(text))
    assert (fin, opcode, masked) == (True, 1, False)
    assert length == size
    assert body == text.encode()


def test_text_length_counts_utf8_bytes() -> None:
    text = "☕" * 42  # 126 bytes: crosses into the 16-bit form although only 42 characters
    frame = build_frame(text)
    _, opcode, _, length, body = parse_header(frame)
    assert opcode == 1
    assert length == 126
    assert frame[1] == 126
    assert body.decode("utf-8") == text


def test_small_text_golden() -> None:
    assert build_frame('{"a":1}') == b'\x81\x07{"a":1}'
    assert build_frame(b"\x04") == b"\x82\x01\x04"


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_text_frame_of_utf8_bytes_is_the_text_frame_of_the_text(size: int) -> None:
    text = ("☕a" * size)[:size]
    assert build_text_frame(text.encode("utf-8")) == build_frame(text)
    _, opcode, _, length, _ = parse_header(build_text_frame(text.encode("utf-8")))
    assert (opcode, length) == (1, len(text.encode("utf-8")))
