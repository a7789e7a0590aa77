"""Phoenix serializer V1/V2 codecs and the V2 binary broadcast frames (protocol.md §1.2, §1.5, §1.6).

Sans-I/O: bytes and strings in, messages out.  Decoding is strict about shape (a bad frame is
dropped by the caller, §2.4); encoding is on the fan-out hot path, so user payloads that arrive
as JSON text are embedded as ``orjson.Fragment`` instead of being parsed and re-serialised.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import DecodeError, PayloadTooDeep
from . import jsonexact

__all__ = [
    "Broadcast",
    "BinaryBroadcastPush",
    "DecodeError",
    "Message",
    "Vsn",
    "decode_binary",
    "decode_text",
    "encode",
    "encode_broadcast",
    "encode_kind4",
    "parse_vsn",
    "persist_ttl",
]


class Vsn(enum.Enum):
    """Serializer version negotiated by the ``vsn`` query parameter (§1.2)."""

    V1 = "1.0.0"
    V2 = "2.0.0"


# §1.2: the reference matches vsn as the semver requirements "~> 1.0.0" / "~> 2.0.0", i.e. any
# patch level of 1.0 or 2.0.  Patch is a non-negative integer without leading zeros (semver).
_VSN_RE = re.compile(r"([12])\.0\.(0|[1-9][0-9]*)")


def parse_vsn(raw: str | None) -> Vsn | None:
    """Map the ``vsn`` query value to a serializer; ``None`` means refuse the upgrade (403)."""
    if raw is None:
        return Vsn.V1  # §1.2: absent -> 1.0.0
    m = _VSN_RE.fullmatch(raw)
    if m is None:
        return None
    return Vsn.V1 if m.group(1) == "1" else Vsn.V2


@dataclass(frozen=True, slots=True)
class Message:
    """One logical Phoenix message: the five fields of §1.5."""

    topic: str
    event: str
    payload: Any
    ref: str | None = None
    join_ref: str | None = None


@dataclass(frozen=True, slots=True)
class BinaryBroadcastPush:
    """A decoded V2 binary kind-3 "user broadcast push" (client -> server, §1.6)."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    metadata: dict[str, Any] | None
    data: bytes
    binary: bool


# --- decoding ---------------------------------------------------------------------------


def _ref(value: Any, what: str) -> str | None:
    # §1.5: refs are opaque strings; tolerate JSON numbers (some clients send them) by
    # stringifying.  bool is an int subclass in Python but is not a JSON number.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DecodeError(f"{what} must be a string or null")


def _str_field(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{what} must be a string")
    return value


def decode_text(vsn: Vsn, text: str | bytes) -> Message:
    """Decode a text frame in the socket's serializer format (§1.5); raise ``DecodeError``."""
    try:
        obj = jsonexact.loads(text)
    except jsonexact.JsonError as exc:
        if exc.too_deep:
            raise _too_deep(vsn, exc.value) from exc
        raise DecodeError("frame is not valid JSON") from exc
    if vsn is Vsn.V1:
        if not isinstance(obj, dict):
            raise DecodeError("V1 frame must be a JSON object")
        try:
            topic, event, payload, ref = obj["topic"], obj["event"], obj["payload"], obj["ref"]
        except KeyError as exc:
            raise DecodeError("V1 frame misses a required key") from exc
        join_ref = obj.get("join_ref")
    else:
        # §1.5: an array of at least five elements; trailing extras are ignored.
        if not isinstance(obj, list) or len(obj) < 5:
            raise DecodeError("V2 frame must be an array of at least five elements")
        join_ref, ref, topic, event, payload = obj[0], obj[1], obj[2], obj[3], obj[4]
    return Message(
        topic=_str_field(topic, "topic"),
        event=_str_field(event, "event"),
        payload=payload,
        ref=_ref(ref, "ref"),
        join_ref=_ref(join_ref, "join_ref"),
    )


def _too_deep(vsn: Vsn, obj: Any) -> PayloadTooDeep:
    """The refusal of a frame nested too deeply, with its topic and refs when they are readable."""
    fields: tuple[Any, Any, Any] = (None, None, None)
    if vsn is Vsn.V1 and isinstance(obj, dict):
        fields = (obj.get("topic"), obj.get("ref"), obj.get("join_ref"))
    elif vsn is Vsn.V2 and isinstance(obj, list) and len(obj) >= 3:
        fields = (obj[2], obj[1], obj[0])
    topic, ref, join_ref = (v if isinstance(v, str) else None for v in fields)
    return PayloadTooDeep(topic, ref, join_ref)


_KIND3_HEADER = 7  # kind + join_ref_len, ref_len, topic_len, event_len, meta_len, encoding


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what} is not valid UTF-8") from exc


def decode_binary(vsn: Vsn, data: bytes) -> BinaryBroadcastPush:
    """Decode a V2 binary frame; only kind 3 is accepted from clients (§1.6, §2.4).

    Raises ``DecodeError``, or ``PayloadTooDeep`` (with the header's topic and refs) for a JSON
    payload nested more than 128 levels deep."""
    if vsn is not Vsn.V2:
        raise DecodeError("binary frame on a V1 socket")
    if len(data) < _KIND3_HEADER:
        raise DecodeError("binary frame too short")
    kind, jr_len, ref_len, topic_len, event_len, meta_len, encoding = data[:_KIND3_HEADER]
    if kind != 3:
        raise DecodeError(f"unsupported binary kind {kind}")
    if encoding not in (0, 1):
        raise DecodeError(f"unknown payload encoding {encoding}")
    off = _KIND3_HEADER
    end_strings = off + jr_len + ref_len + topic_len + event_len + meta_len
    if len(data) < end_strings:
        raise DecodeError("binary frame truncated")
    view = memoryview(data)
    join_ref = _utf8(bytes(view[off : off + jr_len]), "join_ref")
    off += jr_len
    ref = _utf8(bytes(view[off : off + ref_len]), "ref")
    off += ref_len
    topic = _utf8(bytes(view[off : off + topic_len]), "topic")
    off += topic_len
    event = _utf8(bytes(view[off : off + event_len]), "event")
    off += event_len
    metadata: dict[str, Any] | None = None
    if meta_len:
        try:
            meta_obj = jsonexact.loads(view[off : off + meta_len])
        except jsonexact.JsonError as exc:
            raise DecodeError(f"metadata is {exc}") from exc
        if not isinstance(meta_obj, dict):
            raise DecodeError("metadata must be a JSON object")
        metadata = meta_obj
    payload = bytes(view[end_strings:])
    binary = encoding == 0
    if not binary:
        # §4.1 SHOULD: never relay broken JSON to V1 receivers (or as a Fragment).
        try:
            jsonexact.loads(payload)
        except jsonexact.JsonError as exc:
            if exc.too_deep:  # §2.4: refused, and answered when the header carries a ref
                raise PayloadTooDeep(topic, ref or None, join_ref or None) from exc
            raise DecodeError(f"encoding-1 payload is {exc}") from exc
    return BinaryBroadcastPush(
        join_ref=join_ref or None,
        ref=ref or None,
        topic=topic,
        event=event,
        metadata=metadata,
        data=payload,
        binary=binary,
    )


#: §4.9: the largest ``persist`` ttl (seconds) accepted, a PostgreSQL ``int``
PERSIST_TTL_MAX = 2_147_483_647


def persist_ttl(metadata: dict[str, Any] | None) -> tuple[bool, int | None]:
    """What kind-3 ``metadata`` asks of ``persist`` (§4.9): ``(False, None)`` = not persisted
    (no metadata, no key, ``false`` or ``null``); ``(True, None)`` = kept without a ttl
    (``true``, or an object without ``ttl``); ``(True, ttl)`` = kept ``ttl`` seconds.
    Raises ``ValueError`` for any other value, or a ttl that is not an integer 1…2147483647."""
    if metadata is None:
        return False, None
    value = metadata.get("persist")
    if value is None or value is False:
        return False, None
    if value is True:
        return True, None
    if isinstance(value, dict):
        ttl = value.get("ttl")
        if ttl is None:
            return True, None
        if isinstance(ttl, int) and not isinstance(ttl, bool) and 1 <= ttl <= PERSIST_TTL_MAX:
            return True, ttl
    raise ValueError("invalid persist metadata")


# --- encoding ---------------------------------------------------------------------------


def encode(vsn: Vsn, msg: Message) -> str:
    """Encode a server message (§1.5).  V1 objects never carry ``join_ref``."""
    return encode_utf8(vsn, msg).decode("utf-8")


def encode_utf8(vsn: Vsn, msg: Message) -> bytes:
    """:func:`encode` as UTF-8 bytes, ready to frame: a large message (a crowded topic's
    presence_state) is not copied into a ``str`` and back."""
    if vsn is Vsn.V1:
        obj: Any = {"topic": msg.topic, "event": msg.event, "payload": msg.payload, "ref": msg.ref}
    else:
        obj = [msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload]
    return orjson.dumps(obj)


@dataclass(frozen=True, slots=True)
class Broadcast:
    """One message to fan out to every subscriber of a stream, encoded once per wire format.

    Two forms (§4.3): the TEXT form (``event is None``) relays a text push's payload object
    verbatim; the USER form carries a user event plus JSON-text or raw-bytes ``data``.
    In the USER form with ``binary=False``, ``data`` MUST be valid JSON text: it is embedded
    as-is, never re-parsed.
    """

    topic: str
    payload: Any = None
    event: str | None = None
    data: bytes = b""
    binary: bool = False
    meta: dict[str, Any] | None = None    # USER form: kind-4 metadata / the V1 "meta" key; any form: its "id" lets a replayed channel skip the duplicate (§4.8)


def encode_kind4(
    topic: str, event: str, meta: dict[str, Any] | None, data: bytes, binary: bool
) -> bytes | None:
    """Build a kind-4 user broadcast frame body (§1.6); ``None`` if a field exceeds 255 bytes."""
    topic_b = topic.encode("utf-8")
    event_b = event.encode("utf-8")
    meta_b = b"" if meta is None else orjson.dumps(meta)
    if len(topic_b) > 255 or len(event_b) > 255 or len(meta_b) > 255:
        return None
    header = bytes((4, len(topic_b), len(event_b), len(meta_b), 0 if binary else 1))
    return b"".join((header, topic_b, event_b, meta_b, data))


def _user_payload_v2(b: Broadcast, event: str) -> dict[str, Any]:
    # The object realtime-js builds from a kind-4 frame (§1.6); ``data`` relayed byte-exact.
    inner: dict[str, Any] = {"type": "broadcast", "event": event, "payload": orjson.Fragment(b.data)}
    if b.meta is not None:
        inner["meta"] = b.meta
    return inner


def _user_payload_v1(b: Broadcast, event: str) -> dict[str, Any]:
    # The object the reference sends V1 receivers (§4.3); ``data`` relayed byte-exact.
    inner: dict[str, Any] = {"event": event, "payload": orjson.Fragment(b.data), "type": "broadcast"}
    if b.meta is not None:
        inner["meta"] = b.meta
    return inner


def encode_broadcast(vsn: Vsn, b: Broadcast) -> str | bytes | None:
    """Encode one fan-out message for a wire format; ``None`` = not deliverable to it (§4.3)."""
    event = b.event
    if event is None:  # TEXT form: relay the payload object verbatim (§4.1, §4.3 row 1)
        if vsn is Vsn.V1:
            text = orjson.dumps(
                {"topic": b.topic, "event": "broadcast", "payload": b.payload, "ref": None}
            )
        else:
            text = orjson.dumps([None, None, b.topic, "broadcast", b.payload])
        return text.decode("utf-8")
    if vsn is Vsn.V2:
        frame = encode_kind4(b.topic, event, b.meta, b.data, b.binary)
        if frame is not None:
            return frame
        if b.binary:
            return None  # §1.6: bytes can only travel as kind 4
        # §1.6: an equivalent text frame is acceptable for JSON payloads.
        return orjson.dumps([None, None, b.topic, "broadcast", _user_payload_v2(b, event)]).decode(
            "utf-8"
        )
    if b.binary:
        return None  # §4.3: V1 cannot carry bytes
    return orjson.dumps(
        {"topic": b.topic, "event": "broadcast", "payload": _user_payload_v1(b, event), "ref": None}
    ).decode("utf-8")
