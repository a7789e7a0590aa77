"""The backbone between server nodes: publish/subscribe per stream, and presence replication.

Every backend (memory, Redis) implements :class:`PubSub` and passes the same conformance suite.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..protocol.codec import Broadcast
from ..protocol.keys import StreamKey
from .retention import Gap, History


class Health(enum.Enum):
    """A backbone's state, for /health: ``degraded`` means local delivery only."""

    CONNECTED = "connected"
    DEGRADED = "degraded"


@dataclass(frozen=True, slots=True)
class Envelope:
    """What travels between nodes for one stream.

    Exactly one of ``broadcast`` (a user/text broadcast to fan out) and ``control`` (a JSON op on
    an internal stream: presence replication and heartbeats, shared database transactions) is
    set.  ``exclude`` names the sending channel
    on its ``origin`` node when the sender asked not to receive its own message (§4.2); other
    nodes ignore it.

    ``offset``/``epoch`` are the broadcast's place in its stream (retention.py), set by the
    backbone when it publishes the envelope; ``None`` before that, on control envelopes and
    when retention is off.
    """

    stream: StreamKey
    origin: str
    broadcast: Broadcast | None = None
    control: dict[str, Any] | None = None
    exclude: Any = None
    offset: int | None = None
    epoch: str | None = None
    #: ``perf_counter()`` when the origin node accepted the broadcast (never crosses nodes; /metrics)
    accepted: float | None = field(default=None, compare=False)


Deliver = Callable[[Envelope], None]


class PubSub(Protocol):
    """Plug point for the inter-node backbone.

    Guarantees every backend must give (checked by the conformance suite):

    * envelopes published to one stream by one node reach each subscribed node **in publish
      order**;
    * delivery is at most once; a node receives its own envelopes too (it fans out locally
      from the same path as remote messages);
    * ``publish`` never blocks the caller: it returns immediately and any I/O happens later.
    """

    @property
    def health(self) -> Health:
        """Whether envelopes reach the other nodes right now."""

    async def start(self, deliver: Deliver) -> None:
        """Begin delivering envelopes of subscribed streams to ``deliver``."""

    async def close(self) -> None:
        """Stop delivering and release resources."""

    def subscribe(self, stream: StreamKey) -> None:
        """Start receiving ``stream`` (idempotent)."""

    def unsubscribe(self, stream: StreamKey) -> None:
        """Stop receiving ``stream`` (idempotent)."""

    def confirmed(self, stream: StreamKey) -> Awaitable[None] | None:
        """After ``subscribe(stream)``: ``None`` when envelopes published from now on (by any
        node) are sure to arrive here, otherwise an awaitable that resolves once they are (a
        networked backend waits for the broker to confirm the subscription).  Never raises."""

    def publish(self, envelope: Envelope) -> None:
        """Send ``envelope`` to every node subscribed to ``envelope.stream``; a broadcast gets
        the stream's next offset on the way (when retention is on), and every node receives
        a stream's broadcasts in offset order."""

    @property
    def resume_enabled(self) -> bool:
        """Whether broadcasts get offsets and ``history`` can answer."""

    async def history(self, stream: StreamKey, epoch: str, after: int) -> tuple[History[Broadcast], Gap | None]:
        """The retained broadcasts of ``stream`` a client that stopped at ``(epoch, after)``
        has not seen, oldest first, and the gap before them.  Never raises: a backbone that
        cannot read its log answers with an unknown gap."""
