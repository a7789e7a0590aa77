"""In-process PubSub: the default backend and the reference implementation."""

from __future__ import annotations

import time

import orjson

from ..protocol import jsonexact
from ..protocol.codec import Broadcast
from . import Deliver, Envelope, Health
from .retention import Gap, History, Retention, RetentionLimits


#: a retained broadcast: topic, event, data, binary, meta JSON, payload JSON (or, for a payload
#: JSON cannot carry, the broadcast itself)
Packed = tuple[str, str | None, bytes, bool, bytes | None, "bytes | Broadcast | None"]


def pack(b: Broadcast) -> tuple[Packed, int]:
    """``b`` as atoms, and the bytes it is counted for (its data, or its payload's JSON).

    Retained broadcasts are most of a busy server's objects; as tuples of strings and bytes the
    garbage collector stops tracking them, so they do not lengthen its full collections (a
    pause of the event loop that grew with every retained message)."""
    meta = None if b.meta is None else exact(orjson.dumps(b.meta))
    if b.event is not None:
        return (b.topic, b.event, exact(b.data), b.binary, meta, None), len(b.data) + len(b.topic) + len(b.event) + 64
    try:
        payload = exact(orjson.dumps(b.payload))
    except (TypeError, orjson.JSONEncodeError):
        return (b.topic, None, b"", False, None, b), len(b.topic) + 64
    return (b.topic, None, b"", False, meta, payload), len(payload) + len(b.topic) + 64


def exact(data: bytes) -> bytes:
    """A copy of ``data`` in a block of its own size: what orjson returns sits in a 4 KiB block
    however short it is, which a retained message would keep."""
    return bytes(memoryview(data))


def unpack(p: Packed) -> Broadcast:
    topic, event, data, binary, meta, payload = p
    if isinstance(payload, Broadcast):
        return payload
    return Broadcast(topic, None if payload is None else jsonexact.loads(payload, max_depth=None), event, data,
                     binary, None if meta is None else orjson.loads(meta))


class BroadcastRetention:
    """:class:`Retention` of broadcasts, kept packed (:func:`pack`)."""

    def __init__(self, limits: RetentionLimits, epoch_prefix: str = "") -> None:
        self.ring: Retention[Packed] = Retention(limits, epoch_prefix=epoch_prefix)

    @property
    def limits(self) -> RetentionLimits:
        return self.ring.limits

    def append(self, stream: str, b: Broadcast, now: float) -> tuple[int, str]:
        packed, size = pack(b)
        return self.ring.append(stream, packed, size, now)

    def history(self, stream: str, after: int, asked_epoch: str, now: float) -> tuple[History[Broadcast], Gap | None]:
        h, gap = self.ring.history(stream, after, asked_epoch, now)
        return History(h.epoch, h.head, h.first, tuple((off, unpack(p)) for off, p in h.entries)), gap


class MemoryBroker:
    """Shared by the :class:`MemoryPubSub` instances of one process (one per node), with the
    offsets and retained broadcasts of every stream."""

    def __init__(self, limits: RetentionLimits | None = None) -> None:
        self.subscribers: dict[str, set[MemoryPubSub]] = {}
        self.retention = BroadcastRetention(limits or RetentionLimits())


class MemoryPubSub:
    """Delivers synchronously inside ``publish``: per-stream order is publish order (and offset
    order), and a message is delivered exactly once to each subscribed node (there is nothing
    to lose)."""

    def __init__(self, broker: MemoryBroker | None = None, limits: RetentionLimits | None = None) -> None:
        self._broker = broker if broker is not None else MemoryBroker(limits)
        self._deliver: Deliver | None = None
        self._streams: set[str] = set()

    @property
    def health(self) -> Health:
        return Health.CONNECTED  # nothing between the nodes of one process can fail

    @property
    def resume_enabled(self) -> bool:
        return self._broker.retention.limits.enabled

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        for stream in list(self._streams):
            self.unsubscribe(stream)
        self._deliver = None

    def subscribe(self, stream: str) -> None:
        self._streams.add(stream)
        self._broker.subscribers.setdefault(stream, set()).add(self)

    def unsubscribe(self, stream: str) -> None:
        self._streams.discard(stream)
        subs = self._broker.subscribers.get(stream)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self._broker.subscribers[stream]

    def confirmed(self, stream: str) -> None:
        """Subscriptions take effect at once in-process."""
        return None

    def publish(self, envelope: Envelope) -> None:
        b = envelope.broadcast
        retention = self._broker.retention
        if b is not None and retention.limits.enabled:
            offset, epoch = retention.append(envelope.stream, b, time.monotonic())
            e = envelope  # a new envelope field by field: dataclasses.replace costs µs on this path
            envelope = Envelope(e.stream, e.origin, broadcast=b, control=e.control, exclude=e.exclude,
                                offset=offset, epoch=epoch, accepted=e.accepted)
        for node in tuple(self._broker.subscribers.get(envelope.stream, ())):
            if node._deliver is not None:
                node._deliver(envelope)

    async def history(self, stream: str, epoch: str, after: int) -> tuple[History[Broadcast], Gap | None]:
        return self._broker.retention.history(stream, after, epoch, time.monotonic())
