"""Local fan-out: stream → subscribers on this node.

Each message is encoded once per wire format and the same frame bytes are written to every
subscriber (design.md §3 "Fan-out", habit 5).  Writes never await: a subscriber's ``write``
appends to its transport buffer, and the transport's buffer is its bounded outbox (see
``transport.ws.Connection.write`` for the slow-consumer rule).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import Any, Protocol

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


class Offsets:
    """A channel that asked for offsets (protocol.md §4.10): its broadcasts carry
    ``meta.offset``/``meta.epoch``.  While its resume replay loads, live broadcasts are
    ``held``; :meth:`Hub.release` writes the replay, then what was held, and from then on skips
    live broadcasts the replay already covered (same epoch, offset up to ``last``)."""

    __slots__ = ("epoch", "held", "last", "skip_ids", "sub")

    def __init__(self, sub: Subscriber, skip_ids: frozenset[str] = frozenset(), hold: bool = False) -> None:
        self.sub = sub
        self.skip_ids = skip_ids
        self.held: list[tuple[Broadcast, int, str]] | None = [] if hold else None
        self.epoch: str | None = None
        self.last = 0

    @property
    def vsn(self) -> Vsn:
        return self.sub.vsn

    def write(self, frame: bytes) -> None:
        self.sub.write(frame)


def with_offset(b: Broadcast, offset: int, epoch: str, replayed: bool = False) -> Broadcast:
    """``b`` with its place in the stream merged into its meta (the payload's ``meta`` for the
    text form, the kind-4 / V1 ``meta`` for the user form)."""
    extra: dict[str, Any] = {"offset": offset, "epoch": epoch}
    if replayed:
        extra["replayed"] = True
    if b.event is not None:
        return Broadcast(b.topic, b.payload, b.event, b.data, b.binary, {**(b.meta or {}), **extra})
    if not isinstance(b.payload, dict):
        return b
    meta = b.payload.get("meta")
    return Broadcast(b.topic, {**b.payload, "meta": {**(meta if isinstance(meta, dict) else {}), **extra}})


def _frame(vsn: Vsn, b: Broadcast) -> bytes | None:
    data = encode_broadcast(vsn, b)
    return None if data is None else build_frame(data)


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

    def fanout_broadcast(self, stream: str, b: Broadcast, exclude: SubId | None = None,
                         offset: int | None = None, epoch: str | None = None) -> int:
        """Deliver ``b`` to the stream's subscribers except ``exclude``; returns deliveries.
        Frames are built once per wire format, and once more per format with the offset for
        channels that asked for offsets."""
        subs = self._streams.get(stream)
        if not subs:
            return 0
        frames: dict[Vsn, bytes | None] = {}
        marked: dict[Vsn, bytes | None] = {}
        placed: Broadcast | None = None
        delivered = 0
        meta_id = b.meta.get("id") if b.meta else None
        for sid, sub in subs.items():
            if sid == exclude:
                continue
            if meta_id is not None and isinstance(sub, SkipIds | Offsets) and meta_id in sub.skip_ids:
                continue
            vsn = sub.vsn
            if type(sub) is Offsets and offset is not None and epoch is not None:
                if sub.held is not None:
                    sub.held.append((b, offset, epoch))
                    continue
                if offset <= sub.last and epoch == sub.epoch:
                    continue  # the resume replay delivered it
                try:
                    frame = marked[vsn]
                except KeyError:
                    placed = placed or with_offset(b, offset, epoch)
                    frame = marked[vsn] = _frame(vsn, placed)
            else:
                try:
                    frame = frames[vsn]
                except KeyError:
                    frame = frames[vsn] = _frame(vsn, b)
            if frame is not None:  # None: binary payload to a V1 socket (protocol.md §4.3)
                sub.write(frame)
                delivered += 1
        return delivered

    def release(self, stream: str, sid: SubId, epoch: str, replay: Sequence[tuple[int, Broadcast]],
                covered: int = 0) -> int:
        """End a resume (see :class:`Offsets`): write ``replay`` (marked ``replayed``), then the
        live broadcasts held meanwhile that neither it nor the client (which had ``epoch`` up
        to ``covered``) has seen; returns deliveries."""
        sub = self._streams.get(stream, {}).get(sid)
        if type(sub) is not Offsets or sub.held is None:
            return 0
        held, sub.held = sub.held, None
        delivered = 0
        last = covered
        for offset, b in replay:
            meta_id = b.meta.get("id") if b.meta else None
            last = max(last, offset)
            if meta_id is not None and meta_id in sub.skip_ids:
                continue  # delivered by the stored-message replay (protocol.md §4.8)
            frame = _frame(sub.vsn, with_offset(b, offset, epoch, replayed=True))
            if frame is not None:
                sub.write(frame)
                delivered += 1
        sub.epoch, sub.last = epoch, last
        for b, offset, live_epoch in held:
            if live_epoch == epoch and offset <= last:
                continue
            frame = _frame(sub.vsn, with_offset(b, offset, live_epoch))
            if frame is not None:
                sub.write(frame)
                delivered += 1
        return delivered

    def outcomes(self, stream: str, b: Broadcast, exclude: SubId | None = None) -> list[tuple[SubId, str | None]]:
        """For tracing: what ``fanout_broadcast`` does with ``b`` for each local subscriber of
        the stream — ``None`` (written) or why not.  Not on the hot path."""
        out: list[tuple[SubId, str | None]] = []
        meta_id = b.meta.get("id") if b.meta else None
        for sid, sub in self._streams.get(stream, {}).items():
            inner = sub.sub if isinstance(sub, SkipIds | Offsets) else sub
            if sid == exclude:
                out.append((sid, "self: false (the sender's own channel)"))
            elif meta_id is not None and isinstance(sub, SkipIds | Offsets) and meta_id in sub.skip_ids:
                out.append((sid, "already replayed to this channel"))
            elif getattr(inner, "closing", False):
                out.append((sid, "slow consumer (connection closing)"))
            elif _frame(sub.vsn, b) is None:
                out.append((sid, "binary payload to a vsn 1.0.0 socket"))
            else:
                out.append((sid, None))
        return out

    def fanout_message(self, stream: str, msg: Message, exclude: Collection[SubId] = ()) -> int:
        """Deliver a server message (e.g. ``presence_diff``) to every subscriber of the stream
        but those in ``exclude``."""
        subs = self._streams.get(stream)
        if not subs:
            return 0
        if exclude:
            return deliver(msg, [sub for sid, sub in subs.items() if sid not in exclude])
        return deliver(msg, subs.values())

    def send_one(self, stream: str, sid: SubId, msg: Message) -> int:
        """Deliver a server message to one subscriber of the stream (0 when not subscribed)."""
        sub = self._streams.get(stream, {}).get(sid)
        return deliver(msg, [sub]) if sub is not None else 0
