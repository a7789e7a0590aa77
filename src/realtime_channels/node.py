"""One server node: wires the hub, the PubSub backbone and presence state together.

Everything a stream receives, local or remote, arrives through ``PubSub`` → ``_deliver`` →
the hub, so a message is handled the same way whichever node sent it.  The node sees only the
PubSub interface; ``cli`` picks the concrete backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Protocol

from .config import Settings
from .hub import Hub, Subscriber
from .protocol.codec import Broadcast, Message
from .protocol.presence import RefGenerator, TopicPresence
from .protocol.session import TOPIC_PREFIX
from .pubsub import Envelope, PubSub

log = logging.getLogger(__name__)


class ChannelPeer(Subscriber, Protocol):
    """A connection as the node sees it: it can take frames and whole messages."""

    def send(self, msg: Message) -> None: ...


class ChangeFeed(Protocol):
    """postgres_changes (protocol.md §6): subscriptions per channel, fed by the database."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def subscribe(self, conn_id: int, peer: ChannelPeer, topic: str, join_ref: str | None,
                  bindings: Sequence[dict[str, Any]], claims: Mapping[str, Any]) -> None:
        """Validate and create the channel's subscriptions; report with a ``system`` message."""

    def unsubscribe(self, conn_id: int, topic: str) -> None: ...


def topic_of(stream: str) -> str:
    """``pub:room1`` / ``priv:room1`` → ``realtime:room1`` (the topic every client sees)."""
    return TOPIC_PREFIX + stream.split(":", 1)[1]


POSTGRES_NOT_CONFIGURED = (
    "Unable to subscribe to changes with given parameters. "
    "PostgreSQL is not configured (set REALTIME_DATABASE_URL)"
)


class Node:
    def __init__(self, settings: Settings, pubsub: PubSub, node_id: str | None = None,
                 changes: ChangeFeed | None = None) -> None:
        self.settings = settings
        self.pubsub = pubsub
        self.changes = changes
        self.node_id = node_id or os.urandom(6).hex()
        self.hub = Hub()
        self.presence: dict[str, TopicPresence] = {}
        self.refs = RefGenerator(os.urandom(6))

    async def start(self) -> None:
        await self.pubsub.start(self._deliver)
        if self.changes is not None:
            await self.changes.start()

    async def stop(self) -> None:
        if self.changes is not None:
            await self.changes.stop()
        await self.pubsub.close()

    # streams ---------------------------------------------------------------------------------

    def subscribe(self, stream: str, sid: Hashable, sub: Subscriber) -> None:
        if self.hub.add(stream, sid, sub):
            self.pubsub.subscribe(stream)

    def unsubscribe(self, stream: str, sid: Hashable) -> None:
        if self.hub.remove(stream, sid):
            self.pubsub.unsubscribe(stream)

    def publish(self, stream: str, b: Broadcast, exclude: Hashable | None = None) -> None:
        self.pubsub.publish(Envelope(stream, self.node_id, broadcast=b, exclude=exclude))

    def _deliver(self, env: Envelope) -> None:
        if env.broadcast is not None:
            exclude = env.exclude if env.origin == self.node_id else None
            self.hub.fanout_broadcast(env.stream, env.broadcast, exclude)
        elif env.presence_diff is not None:
            msg = Message(topic_of(env.stream), "presence_diff", env.presence_diff)
            self.hub.fanout_message(env.stream, msg)

    # presence (protocol.md §5) ---------------------------------------------------------------

    def track(self, stream: str, owner: Hashable, key: str, payload: Mapping[str, Any]) -> None:
        state = self.presence.setdefault(stream, TopicPresence())
        diff = state.track((self.node_id, owner), key, payload, self.refs.next())
        if diff is not None:
            self.pubsub.publish(Envelope(stream, self.node_id, presence_diff=diff.payload()))

    def untrack(self, stream: str, owner: Hashable) -> None:
        state = self.presence.get(stream)
        if state is None:
            return
        diff = state.untrack((self.node_id, owner))
        if not state:
            del self.presence[stream]
        if diff is not None:
            self.pubsub.publish(Envelope(stream, self.node_id, presence_diff=diff.payload()))

    def presence_state(self, stream: str) -> dict[str, Any]:
        state = self.presence.get(stream)
        return state.state_payload() if state is not None else {}

    # postgres_changes (protocol.md §6) -------------------------------------------------------

    def subscribe_postgres(self, conn_id: int, peer: ChannelPeer, topic: str, join_ref: str | None,
                           bindings: Sequence[dict[str, Any]], claims: Mapping[str, Any]) -> None:
        """Without a database every binding fails with a ``system`` error (§6.3)."""
        if self.changes is not None:
            self.changes.subscribe(conn_id, peer, topic, join_ref, bindings, claims)
            return
        payload = {
            "extension": "postgres_changes",
            "status": "error",
            "message": POSTGRES_NOT_CONFIGURED,
            "channel": topic[len(TOPIC_PREFIX) :],
        }
        peer.send(Message(topic, "system", payload, ref=None, join_ref=join_ref))

    def unsubscribe_postgres(self, conn_id: int, topic: str) -> None:
        if self.changes is not None:
            self.changes.unsubscribe(conn_id, topic)
