"""The server's RFC 6455 reader (protocol/wsread.py) against frames built by ``websockets``."""

from __future__ import annotations

import os

import pytest
from websockets.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, Frame

from realtime_channels.protocol import wsread
from realtime_channels.protocol.wsread import BadHead, FrameReader, Violation, parse_close, parse_head


def client_frame(opcode: object, data: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    frame = bytearray(Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[]))  # type: ignore[arg-type]
    if rsv1:  # websockets will not build it: set the bit by hand
        frame[0] |= 0x40
    return bytes(frame)


def read_all(reader: FrameReader) -> list[tuple[int, bytes]]:
    out = []
    while (frame := reader.next()) is not None:
        out.append(frame)
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_lengths_of_every_encoding_are_read_and_unmasked(size: int) -> None:
    data = os.urandom(size)
    reader = FrameReader(1_000_000)
    reader.feed(client_frame(OP_BINARY, data))
    assert read_all(reader) == [(wsread.BINARY, data)]
    assert reader.pending() == 0


def test_frames_split_at_every_byte_come_out_whole_and_in_order() -> None:
    stream = client_frame(OP_TEXT, b"hello") + client_frame(OP_BINARY, b"\x03abc" * 40) + client_frame(OP_PING, b"p")
    reader = FrameReader(1_000)
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i:i + 1])
        got += read_all(reader)
    assert got == [(wsread.TEXT, b"hello"), (wsread.BINARY, b"\x03abc" * 40), (wsread.PING, b"p")]


def test_fragments_are_joined_and_control_frames_may_come_between_them() -> None:
    reader = FrameReader(1_000)
    reader.feed(client_frame(OP_TEXT, b"ab", fin=False) + client_frame(OP_PING, b"x")
                + client_frame(OP_CONT, b"cd", fin=False) + client_frame(OP_CONT, b"ef"))
    assert read_all(reader) == [(wsread.PING, b"x"), (wsread.TEXT, b"abcdef")]


@pytest.mark.parametrize(("stream", "code"), [
    (Frame(OP_TEXT, b"x").serialize(mask=False, extensions=[]), 1002),  # unmasked client frame
    (client_frame(OP_TEXT, b"x", rsv1=True), 1002),  # no extension was agreed
    (client_frame(OP_CONT, b"x"), 1002),  # continuation without a message
    (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), 1002),
    (bytes([0x89, 0x80 | 126, 0, 126]) + b"\0\0\0\0" + b"x" * 126, 1002),  # control: at most 125 bytes
    (bytes([0x09, 0x81]) + b"\0\0\0\0x", 1002),  # and never fragmented
    (bytes([0x83, 0x80]) + b"\0\0\0\0", 1002),  # opcode 3 is reserved
    (bytes([0x8B, 0x80]) + b"\0\0\0\0", 1002),  # opcode 11 too
])
def test_protocol_violations_are_named_with_their_close_code(stream: bytes, code: int) -> None:
    reader = FrameReader(1_000)
    reader.feed(stream)
    with pytest.raises(Violation) as exc:
        read_all(reader)
    assert exc.value.code == code


def test_a_message_over_the_limit_is_refused_from_its_header_alone() -> None:
    reader = FrameReader(1_000)
    reader.feed(client_frame(OP_BINARY, b"x" * 1_001)[:14])  # only the header and a few bytes
    with pytest.raises(Violation) as exc:
        reader.next()
    assert exc.value.code == 1009


def test_fragments_adding_up_over_the_limit_are_refused() -> None:
    reader = FrameReader(1_000)
    reader.feed(client_frame(OP_BINARY, b"x" * 600, fin=False) + client_frame(OP_CONT, b"x" * 600))
    with pytest.raises(Violation) as exc:
        read_all(reader)
    assert exc.value.code == 1009


def test_after_a_violation_everything_is_dropped() -> None:
    reader = FrameReader(1_000)
    reader.fail()
    reader.feed(client_frame(OP_TEXT, b"x"))
    assert reader.next() is None and reader.pending() == 0


def test_close_frames_give_their_code_and_reason() -> None:
    assert parse_close(b"") == (1005, "")
    assert parse_close((1000).to_bytes(2, "big") + "bye é".encode()) == (1000, "bye é")
    assert parse_close((4001).to_bytes(2, "big")) == (4001, "")
    for bad, code in [(b"\x03", 1002), ((1005).to_bytes(2, "big"), 1002), ((999).to_bytes(2, "big"), 1002),
                      ((1000).to_bytes(2, "big") + b"\xff", 1007)]:
        with pytest.raises(Violation) as exc:
            parse_close(bad)
        assert exc.value.code == code
    reader = FrameReader(1_000)
    reader.feed(client_frame(OP_CLOSE, (1001).to_bytes(2, "big")))
    assert read_all(reader) == [(wsread.CLOSE, (1001).to_bytes(2, "big"))]


def test_the_accept_key_is_the_rfc_example() -> None:
    assert wsread.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3


def test_an_upgrade_head_is_read() -> None:
    head = parse_head(b"GET /realtime/v1/websocket?apikey=a%2Bb&vsn=2.0.0&vsn=9 HTTP/1.1\r\n"
                      b"Host: acme.localhost:4000\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                      b"X-Custom: one\r\nx-custom: two", 8190)
    assert (head.method, head.path) == ("GET", "/realtime/v1/websocket")
    assert head.query == {"apikey": "a+b", "vsn": "2.0.0"}  # the first of a repeated parameter
    assert head.headers["host"] == "acme.localhost:4000" and head.headers.getall("X-CUSTOM") == ["one", "two"]
    assert head.is_websocket_upgrade() and head.websocket_key() == "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize("fields", [b"", b"\r\nSec-WebSocket-Version: 13", b"\r\nSec-WebSocket-Key: c2hvcnQ=",
                                    b"\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
def test_a_handshake_without_a_good_key_and_version_has_no_key(fields: bytes) -> None:
    head = parse_head(b"GET /socket/websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade" + fields, 8190)
    assert head.is_websocket_upgrade() and head.websocket_key() is None


@pytest.mark.parametrize(("raw", "status"), [(b"GET /x", 400), (b"GET /x HTTP/2\r\n", 400),
                                             (b"GET /x HTTP/1.1\r\nno colon", 400),
                                             (b"GET /x HTTP/1.1\r\n folded: x", 400),
                                             (b"GET /" + b"x" * 9000 + b" HTTP/1.1", 414),
                                             (b"GET /x HTTP/1.1\r\nA: " + b"x" * 9000, 431)])
def test_malformed_heads_are_refused(raw: bytes, status: int) -> None:
    with pytest.raises(BadHead) as exc:
        parse_head(raw, 8190)
    assert exc.value.status == status
