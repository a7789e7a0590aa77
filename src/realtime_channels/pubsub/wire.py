"""How an :class:`Envelope` travels between nodes as bytes (pure: no I/O, no clocks).

Layout, all integers big-endian::

    version:u8  sender:8 bytes  seq:u64  flags:u8
    stream:str  origin:str  exclude:value
    [broadcast]  topic:str  [payload:json]  [event:str]  data:blob  [meta:json]
    [control]    control:json

    [offset]     offset:20 ASCII digits  epoch:12 ASCII characters   (at the very end)

``str``/``blob``/``json`` are a u32 length then the bytes (UTF-8 text, raw bytes, orjson text);
bracketed parts are present only when their ``flags`` bit is set.  ``sender`` and ``seq`` are
not part of the envelope: they let a backend recognise its own envelopes when Redis echoes them
back (see ``redis.py``) by reading only the fixed-size header.  The offset trailer is fixed-size
text at the end so that the Redis script that assigns the offset can append it to a frame
encoded without it (``OFFSET`` flag set, trailer missing: :func:`encode_envelope` with
``offset_pending=True``).

``exclude`` is whatever the node passes (``(conn_id, topic)``, a probe id, ``None``), so it is
written with a small tagged encoding that keeps tuples as tuples: the origin node compares the
decoded value with ``==`` (pubsub/__init__.py), so ``(7, "t")`` must not come back as a list.
Payloads are JSON values (protocol.md §4.2) and round-trip through orjson, integers beyond 64
bits included (read back as the exact digits, ``jsonexact``, never as floats); ``Broadcast.data``
is carried byte-exact whatever it holds.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from ..protocol import jsonexact
from ..protocol.codec import Broadcast
from ..protocol.keys import StreamKey
from . import Envelope

VERSION = 1
SENDER_LEN = 8
NO_SENDER = bytes(SENDER_LEN)

_HEADER = struct.Struct("!B8sQB")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_F64 = struct.Struct("!d")

# flags
_BROADCAST = 0x01
_CONTROL = 0x02
_PAYLOAD = 0x04
_EVENT = 0x08
_BINARY = 0x10
_META = 0x20
_OFFSET = 0x40

EPOCH_LEN = 12
TRAILER_LEN = 20 + EPOCH_LEN

# exclude value tags
_T_NONE, _T_TRUE, _T_FALSE, _T_INT, _T_BIGINT, _T_FLOAT, _T_STR, _T_BYTES, _T_TUPLE = range(9)
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_MAX_DEPTH = 16


class WireError(ValueError):
    """The bytes are not an envelope of this format (truncated, wrong version, trailing data)."""


# --- encoding -------------------------------------------------------------------------------


def encode_envelope(env: Envelope, *, sender: bytes = NO_SENDER, seq: int = 0,
                    offset_pending: bool = False) -> bytes:
    """Serialize ``env`` (``offset_pending``: flagged for an offset trailer someone else
    appends, see :func:`offset_trailer`); raises ``TypeError`` if a payload is not JSON or ``exclude`` is not
    made of None/bool/int/float/str/bytes/tuple (those cannot cross nodes faithfully)."""
    if len(sender) != SENDER_LEN:
        raise ValueError(f"sender must be {SENDER_LEN} bytes")
    b = env.broadcast
    flags = 0
    parts: list[bytes] = []
    _str(parts, env.stream)
    _str(parts, env.origin)
    _value(parts, env.exclude, 0)
    if b is not None:
        flags |= _BROADCAST
        _str(parts, b.topic)
        if b.payload is not None:
            flags |= _PAYLOAD
            _blob(parts, orjson.dumps(b.payload))
        if b.event is not None:
            flags |= _EVENT
            _str(parts, b.event)
        _blob(parts, b.data)
        if b.binary:
            flags |= _BINARY
        if b.meta is not None:
            flags |= _META
            _blob(parts, orjson.dumps(b.meta))
    if env.control is not None:
        flags |= _CONTROL
        _blob(parts, orjson.dumps(env.control))
    if offset_pending or env.offset is not None:
        flags |= _OFFSET
        if not offset_pending:
            assert env.epoch is not None
            parts.append(offset_trailer(env.offset or 0, env.epoch))
    return _HEADER.pack(VERSION, sender, seq, flags) + b"".join(parts)


def offset_trailer(offset: int, epoch: str) -> bytes:
    raw = epoch.encode("ascii")
    if len(raw) != EPOCH_LEN or not 0 <= offset < 10**20:
        raise ValueError("an offset trailer needs a 12-character epoch and a 20-digit offset")
    return b"%020d" % offset + raw


def read_offset(data: bytes) -> tuple[int, str] | None:
    """``(offset, epoch)`` of a serialized envelope, from its header and trailer only."""
    if len(data) < _HEADER.size or not data[_HEADER.size - 1] & _OFFSET:
        return None
    if len(data) < _HEADER.size + TRAILER_LEN:
        raise WireError("truncated offset trailer")
    tail = data[-TRAILER_LEN:]
    try:
        return int(tail[:20]), tail[20:].decode("ascii")
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"malformed offset trailer: {exc}") from exc


def _blob(parts: list[bytes], data: bytes) -> None:
    parts.append(_U32.pack(len(data)))
    parts.append(data)


def _str(parts: list[bytes], text: str) -> None:
    _blob(parts, text.encode("utf-8"))


def _value(parts: list[bytes], v: Any, depth: int) -> None:
    # ``bool`` before ``int``: True is an int in Python but must come back as True.
    if v is None:
        parts.append(bytes((_T_NONE,)))
    elif v is True:
        parts.append(bytes((_T_TRUE,)))
    elif v is False:
        parts.append(bytes((_T_FALSE,)))
    elif type(v) is int:
        if _I64_MIN <= v <= _I64_MAX:
            parts.append(bytes((_T_INT,)) + _I64.pack(v))
        else:
            parts.append(bytes((_T_BIGINT,)))
            _str(parts, str(v))
    elif type(v) is float:
        parts.append(bytes((_T_FLOAT,)) + _F64.pack(v))
    elif type(v) is str:
        parts.append(bytes((_T_STR,)))
        _str(parts, v)
    elif type(v) is bytes:
        parts.append(bytes((_T_BYTES,)))
        _blob(parts, v)
    elif type(v) is tuple and depth < _MAX_DEPTH:
        parts.append(bytes((_T_TUPLE,)) + _U32.pack(len(v)))
        for item in v:
            _value(parts, item, depth + 1)
    else:
        raise TypeError(f"exclude value of type {type(v).__name__} cannot be sent between nodes")


# --- decoding -------------------------------------------------------------------------------


def read_header(data: bytes) -> tuple[bytes, int]:
    """``(sender, seq)`` of a serialized envelope, without decoding the rest."""
    if len(data) < _HEADER.size:
        raise WireError("truncated header")
    version, sender, seq, _flags = _HEADER.unpack_from(data)
    if version != VERSION:
        raise WireError(f"unknown envelope version {version}")
    return sender, seq


def with_seq(data: bytes, seq: int) -> bytes:
    """The serialized envelope ``data`` with another sequence number (same sender)."""
    version, sender, _seq, flags = _HEADER.unpack_from(data)
    return _HEADER.pack(version, sender, seq, flags) + data[_HEADER.size:]


def decode_envelope(data: bytes) -> Envelope:
    """Inverse of :func:`encode_envelope`; raises :class:`WireError` on malformed input."""
    read_header(data)
    flags = data[_HEADER.size - 1]
    position = read_offset(data)
    if position is not None:
        data = data[:-TRAILER_LEN]
    r = _Reader(data, _HEADER.size)
    try:
        stream = r.text()
        origin = r.text()
        exclude = r.value(0)
        broadcast: Broadcast | None = None
        if flags & _BROADCAST:
            topic = r.text()
            payload = _json(r.blob()) if flags & _PAYLOAD else None
            event = r.text() if flags & _EVENT else None
            body = r.blob()
            meta = _json(r.blob()) if flags & _META else None
            broadcast = Broadcast(topic, payload, event, body, bool(flags & _BINARY), meta)
        control = _json(r.blob()) if flags & _CONTROL else None
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"malformed envelope: {exc}") from exc
    if r.pos != len(data):
        raise WireError("trailing bytes after envelope")
    offset, epoch = position if position is not None else (None, None)
    return Envelope(StreamKey(stream), origin, broadcast=broadcast, control=control, exclude=exclude,
                    offset=offset, epoch=epoch)


def _json(data: bytes) -> Any:
    """JSON another node wrote: exact integers, and no nesting limit beyond the writer's."""
    return jsonexact.loads(data, max_depth=None)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def blob(self) -> bytes:
        (n,) = _U32.unpack_from(self.data, self.pos)
        start = self.pos + _U32.size
        end = start + n
        if end > len(self.data):
            raise WireError("truncated field")
        self.pos = end
        return self.data[start:end]

    def text(self) -> str:
        return self.blob().decode("utf-8")

    def tag(self) -> int:
        if self.pos >= len(self.data):
            raise WireError("truncated value")
        t = self.data[self.pos]
        self.pos += 1
        return t

    def value(self, depth: int) -> Any:
        t = self.tag()
        if t == _T_NONE:
            return None
        if t == _T_TRUE:
            return True
        if t == _T_FALSE:
            return False
        if t == _T_INT:
            (i,) = _I64.unpack_from(self.data, self.pos)
            self.pos += _I64.size
            return i
        if t == _T_BIGINT:
            return int(self.text())
        if t == _T_FLOAT:
            (f,) = _F64.unpack_from(self.data, self.pos)
            self.pos += _F64.size
            return f
        if t == _T_STR:
            return self.text()
        if t == _T_BYTES:
            return self.blob()
        if t == _T_TUPLE and depth < _MAX_DEPTH:
            (n,) = _U32.unpack_from(self.data, self.pos)
            self.pos += _U32.size
            if n > len(self.data) - self.pos:  # each item takes at least one byte
                raise WireError("truncated tuple")
            return tuple(self.value(depth + 1) for _ in range(n))
        raise WireError(f"unknown value tag {t}")
