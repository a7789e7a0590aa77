"""RFC 6455 on the server's side, sans-I/O: the upgrade request's head and the client's frames.

``parse_head`` reads an HTTP/1.1 request head (the bytes up to the blank line) into what the
upgrade needs; ``FrameReader`` turns the bytes a client sends after the upgrade into whole
messages and control frames, and says with a close code when the client broke the protocol
(§5.2 framing, §5.3 masking, §5.4 fragmentation, §5.5 control frames, §7.4 close codes).
"""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
from dataclasses import dataclass

from multidict import CIMultiDict

__all__ = ["BINARY", "CLOSE", "PING", "PONG", "TEXT", "BadHead", "FrameReader", "RequestHead", "Violation",
           "accept_key", "close_payload", "parse_close", "parse_head", "upgrade_response"]

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_CONTINUATION = 0x0
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: close codes a peer may send (§7.4.1; 1004–1006 and 1015 are never sent on the wire)
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class Violation(Exception):
    """The client broke RFC 6455: close with ``code`` (1002 protocol, 1007 bad UTF-8, 1009 too big)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class BadHead(Exception):
    """An HTTP request head that cannot be read: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class RequestHead:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]

    def is_websocket_upgrade(self) -> bool:
        """``Upgrade: websocket`` with ``Connection: upgrade`` (§4.2.1): the request asks to switch."""
        upgrade = self.headers.get("upgrade", "")
        connection = self.headers.get("connection", "")
        return upgrade.lower() == "websocket" and "upgrade" in connection.lower()

    def websocket_key(self) -> str | None:
        """The ``Sec-WebSocket-Key`` of a version-13 handshake, if it is well formed (§4.2.1)."""
        if self.headers.get("sec-websocket-version", "").strip() != "13":
            return None
        key = self.headers.get("sec-websocket-key", "").strip()
        try:
            if len(base64.b64decode(key, validate=True)) != 16:
                return None
        except ValueError:
            return None
        return key


def parse_head(head: bytes, max_line: int) -> RequestHead:
    """The request line and header fields of ``head`` (without the final blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise BadHead(400, "undecodable head") from exc
    lines = text.split("\r\n")
    request_line = lines[0]
    if len(request_line) > max_line:
        raise BadHead(414, "request line too long")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadHead(400, "bad request line")
    method, target, _version = parts
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if len(line) > max_line:
            raise BadHead(431, "header field too long")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadHead(400, "bad header field")
        headers.add(name, value.strip())
    path, _, query_string = target.partition("?")
    query: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(query_string, keep_blank_values=True):
        query.setdefault(key, value)
    return RequestHead(method, urllib.parse.unquote(path), query, headers)


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (§4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def upgrade_response(key: str) -> bytes:
    """The 101 answer to an accepted upgrade: no subprotocol, no extension (no compression)."""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode("ascii") + b"\r\n\r\n")


def close_payload(code: int, reason: str) -> bytes:
    """A close frame's body: the code, then the reason cut to fit the 125-byte limit (§5.5.1)."""
    return code.to_bytes(2, "big") + reason.encode("utf-8")[:123]


def parse_close(payload: bytes) -> tuple[int, str]:
    """A peer's close frame: its code (1005 when it gave none) and reason (§5.5.1, §7.1.5)."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise Violation(1002, "close frame of one byte")
    code = int.from_bytes(payload[:2], "big")
    if code not in _SENDABLE and not 3000 <= code <= 4999:
        raise Violation(1002, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Violation(1007, "close reason is not UTF-8") from exc
    return code, reason


def _unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    key = (mask * ((n + 3) // 4))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """A client's frames: ``feed`` what was read, then call ``next`` until it returns ``None``.

    ``next`` returns ``(opcode, payload)``: a whole message (TEXT or BINARY, fragments joined)
    or a control frame (CLOSE, PING, PONG, which may arrive between a message's fragments).  A
    message longer than ``max_size`` is refused as soon as its length is known, before its
    bytes are buffered.  Nothing is allocated while no bytes are pending.
    """

    __slots__ = ("_buf", "_failed", "_opcode", "_parts", "_pos", "_size", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf: bytes | bytearray = b""
        self._pos = 0
        #: the fragments of a message in progress, its opcode and length so far
        self._parts: list[bytes] | None = None
        self._opcode = 0
        self._size = 0
        self._failed = False

    def fail(self) -> None:
        """After a ``Violation`` the stream cannot be read on: what follows is dropped."""
        self._failed = True
        self._buf, self._pos, self._parts = b"", 0, None

    def feed(self, data: bytes) -> None:
        if self._failed:
            return
        if self._pos >= len(self._buf):
            self._buf = data
            self._pos = 0
            return
        if isinstance(self._buf, bytes):
            self._buf = bytearray(memoryview(self._buf)[self._pos:])
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def next(self) -> tuple[int, bytes] | None:
        while True:
            buf, pos = self._buf, self._pos
            avail = len(buf) - pos
            if avail < 2:
                return None
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise Violation(1002, "reserved bits set")
            if not b1 & 0x80:
                raise Violation(1002, "client frame not masked")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if avail < 4:
                    return None
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif n == 127:
                if avail < 10:
                    return None
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if opcode >= 0x8:
                if opcode not in (CLOSE, PING, PONG):
                    raise Violation(1002, f"unknown opcode {opcode}")
                if n > 125 or not fin:
                    raise Violation(1002, "control frame fragmented or over 125 bytes")
            elif opcode not in (_CONTINUATION, TEXT, BINARY):
                raise Violation(1002, f"unknown opcode {opcode}")
            elif self._size + n > self.max_size:
                raise Violation(1009, f"message over {self.max_size} bytes")
            end = pos + head + 4 + n
            if len(buf) < end:
                return None
            mask = bytes(buf[pos + head:pos + head + 4])
            payload = _unmask(bytes(buf[pos + head + 4:end]), mask)
            self._pos = end
            if end >= len(buf):
                self._buf, self._pos = b"", 0
            if opcode >= 0x8:
                return opcode, payload
            if opcode == _CONTINUATION:
                if self._parts is None:
                    raise Violation(1002, "continuation without a message")
                self._parts.append(payload)
                self._size += n
            else:
                if self._parts is not None:
                    raise Violation(1002, "new message inside a fragmented one")
                if fin:
                    return opcode, payload
                self._parts, self._opcode, self._size = [payload], opcode, n
                continue
            if fin:
                whole, kind = b"".join(self._parts), self._opcode
                self._parts, self._opcode, self._size = None, 0, 0
                return kind, whole
