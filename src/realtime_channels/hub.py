"""Local fan-out: stream → subscribers on this node.

Each message is encoded once per wire format and the same frame bytes are written to every
subscriber (design.md §3 "Fan-out", habit 5).  Writes never await: a subscriber's ``write``
appends to its transport buffer, and the transport's buffer is its bounded outbox (see
``transport.ws.Connection.write`` for the slow-consumer rule).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Protocol

from .protocol.codec import Broadcast, Message, Vsn, encode_broadcast, encode_utf8
from .protocol.wsframe import build_frame, build_text_frame

SubId = Hashable


class Subscriber(Protocol):
    @property
    def vsn(self) -> Vsn: ...

    def write(self, frame: bytes) -> None:
        """Queue a pre-built WebSocket frame; must not block or raise."""


class SkipIds:
    """A channel that received replayed messages (protocol.md §4.8): live broadcasts carrying
    one of those ``meta.id`` values are not delivered to it a second time."""

    __slots__ = ("skip_ids", "sub")

    def __init__(self, sub: Subscriber, skip_ids: frozenset[str]) -> None:
        self.sub = sub
        self.skip_ids = skip_ids

    @property
    def vsn(self) -> Vsn:
        return self.sub.vsn

    def write(self, frame: bytes) -> None:
        self.sub.write(frame)


def deliver(msg: Message, subs: Iterable[Subscriber]) -> int:
    """Write one server message to ``subs``, encoded and framed once per wire format (the
    postgres_changes fan-out and ``Hub.fanout_message`` share this path); returns deliveries."""
    # two wire formats exist: one frame slot each, in locals (this runs once per group of
    # connections, often a group of one, so no per-call dict)
    vsn_a: Vsn | None = None
    vsn_b: Vsn | None = None
    frame_a = frame_b = b""
    delivered = 0
    for sub in subs:
        vsn = sub.vsn
        if vsn is vsn_a:
            frame = frame_a
        elif vsn is vsn_b:
            frame = frame_b
        elif vsn_a is None:
            vsn_a, frame = vsn, build_text_frame(encode_utf8(vsn, msg))
            frame_a = frame
        else:
            vsn_b, frame = vsn, build_text_frame(encode_utf8(vsn, msg))
            frame_b = frame
        sub.write(frame)
        delivered += 1
    return delivered


class Hub:
    def __init__(self) -> None:
        self._streams: dict[str, dict[SubId, Subscriber]] = {}

    def add(self, stream: str, sid: SubId, sub: Subscriber) -> bool:
        """Register ``sub``; True when it is the stream's first local subscriber."""
        subs = self._streams.get(stream)
        if subs is None:
            self._streams[stream] = {sid: sub}
            return True
        subs[sid] = sub
        return False

    def remove(self, stream: str, sid: SubId) -> bool:
        """Unregister; True when the stream has no local subscriber left."""
        subs = self._streams.get(stream)
        if subs is None:
            return False
        subs.pop(sid, None)
        if subs:
            return False
        del self._streams[stream]
        return True

    def count(self, stream: str) -> int:
        return len(self._streams.get(stream, ()))

    def fanout_broadcast(self, stream: str, b: Broadcast, exclude: SubId | None = None) -> int:
        """Deliver ``b`` to the stream's subscribers except ``exclude``; returns deliveries."""
        subs = self._streams.get(stream)
        if not subs:
            return 0
        frames: dict[Vsn, bytes | None] = {}
        delivered = 0
        meta_id = b.meta.get("id") if b.meta else None
        for sid, sub in subs.items():
            if sid == exclude:
                continue
            if meta_id is not None and isinstance(sub, SkipIds) and meta_id in sub.skip_ids:
                continue
            vsn = sub.vsn
            try:
                frame = frames[vsn]
            except KeyError:
                data = encode_broadcast(vsn, b)
                frame = frames[vsn] = None if data is None else build_frame(data)
            if frame is not None:  # None: binary payload to a V1 socket (protocol.md §4.3)
                sub.write(frame)
                delivered += 1
        return delivered

    def fanout_message(self, stream: str, msg: Message) -> int:
        """Deliver a server message (e.g. ``presence_diff``) to every subscriber of the stream."""
        subs = self._streams.get(stream)
        if not subs:
            return 0
        return deliver(msg, subs.values())
