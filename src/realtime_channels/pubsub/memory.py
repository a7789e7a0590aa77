"""In-process PubSub: the default backend and the reference implementation."""

from __future__ import annotations

from . import Deliver, Envelope, Health


class MemoryBroker:
    """Shared by the :class:`MemoryPubSub` instances of one process (one per node)."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[MemoryPubSub]] = {}


class MemoryPubSub:
    """Delivers synchronously inside ``publish``: per-stream order is publish order, and a
    message is delivered exactly once to each subscribed node (there is nothing to lose)."""

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self._broker = broker if broker is not None else MemoryBroker()
        self._deliver: Deliver | None = None
        self._streams: set[str] = set()

    @property
    def health(self) -> Health:
        return Health.CONNECTED  # nothing between the nodes of one process can fail

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
        for node in tuple(self._broker.subscribers.get(envelope.stream, ())):
            if node._deliver is not None:
                node._deliver(envelope)
