"""In-process PubSub: the default backend and the reference implementation."""

from __future__ import annotations

import dataclasses
import time

import orjson

from ..protocol.codec import Broadcast
from . import Deliver, Envelope, Health
from .retention import Gap, History, Retention, RetentionLimits


def entry_size(b: Broadcast) -> int:
    """Bytes a retained broadcast is counted for (its data, or its payload's JSON)."""
    if b.event is not None:
        return len(b.data) + len(b.topic) + len(b.event) + 64
    try:
        return len(orjson.dumps(b.payload)) + len(b.topic) + 64
    except (TypeError, orjson.JSONEncodeError):
        return len(b.topic) + 64


class MemoryBroker:
    """Shared by the :class:`MemoryPubSub` instances of one process (one per node), with the
    offsets and retained broadcasts of every stream."""

    def __init__(self, limits: RetentionLimits | None = None) -> None:
        self.subscribers: dict[str, set[MemoryPubSub]] = {}
        self.retention: Retention[Broadcast] = Retention(limits or RetentionLimits())


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
            offset, epoch = retention.append(envelope.stream, b, entry_size(b), time.monotonic())
            e = envelope  # a new envelope field by field: dataclasses.replace costs µs on this path
            envelope = Envelope(e.stream, e.origin, broadcast=b, control=e.control, exclude=e.exclude,
                                offset=offset, epoch=epoch, accepted=e.accepted)
        for node in tuple(self._broker.subscribers.get(envelope.stream, ())):
            if node._deliver is not None:
                node._deliver(envelope)

    async def history(self, stream: str, epoch: str, after: int) -> tuple[History[Broadcast], Gap | None]:
        return self._broker.retention.history(stream, after, epoch, time.monotonic())
