"""One server node: wires the hub, the PubSub backbone and presence state together.

Everything a stream receives, local or remote, arrives through ``PubSub`` → ``_deliver`` →
the hub, so a message is handled the same way whichever node sent it.  The node sees only the
PubSub interface; ``cli`` picks the concrete backend.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from . import errors, metrics
from .config import Settings
from .functions.events import GateResult, RealtimeEvent
from .hub import Hub, Offsets, SkipIds, Subscriber
from .protocol.codec import Broadcast, Message
from .protocol.limits import TenantLimits
from .protocol.keys import StreamKey, topic_of
from .protocol.presence import PresenceDiff, RefGenerator, entry_size, merge_diffs
from .protocol.replica import HEARTBEAT_S, MemberOp, Op, PresenceReplica, decode_op, encode_op
from .protocol.session import (
    BROADCAST_READ,
    TOPIC_PREFIX,
    AuthResult,
    Authorize,
    PersistResult,
    ReplayedMessage,
    stream_key,
)
from .cdc.txwire import share_from_wire, share_to_wire
from .cdc.types import FeedState, ShareOp
from .pubsub import Envelope, PubSub
from .pubsub.retention import Gap, History
from .tracebus import TraceBus

log = logging.getLogger(__name__)


class ChannelPeer(Subscriber, Protocol):
    """A connection as the node sees it: it can take frames and whole messages."""

    def send(self, msg: Message) -> None: ...


class ChangeFeed(Protocol):
    """postgres_changes (protocol.md §6): subscriptions per channel, fed by the database."""

    #: where routing reports what it did with each change of a traced topic
    trace: TraceBus | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def subscribe(self, conn_id: int, peer: ChannelPeer, topic: str, join_ref: str | None,
                  bindings: Sequence[dict[str, Any]], claims: Mapping[str, Any],
                  ready: Callable[[errors.SubscribeError | None], None] | None = None,
                  offsets: bool = False, resume_from: tuple[int, int] | None = None,
                  snapshot: bool = True) -> None:
        """Validate and create the channel's subscriptions; report with a ``system`` message,
        or (a join waiting for them, protocol.md §3.11) call ``ready`` once: ``None`` as soon as
        they are live, else the error that refused them for good."""

    def unsubscribe(self, conn_id: int, topic: str) -> None: ...

    def attach(self, share: Callable[[ShareOp], None]) -> None:
        """Give the feed a way to send ops to every node (one node reads, all route)."""

    def handle_shared(self, op: ShareOp) -> None: ...

    def add_state_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever this node's own reader changes state."""

    @property
    def state(self) -> FeedState:
        """``"streaming"`` once changes flow (on followers: as the reading node reports)."""


class ReplayRowLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def event(self) -> str: ...

    @property
    def payload_json(self) -> bytes | None: ...

    @property
    def binary(self) -> bytes | None: ...


class Authorizer(Protocol):
    """Private-channel policies on ``realtime.messages`` (protocol.md §7.3) and replay (§4.8)."""

    async def can_read(self, sub_topic: str, claims: Mapping[str, Any], headers: Mapping[str, str],
                       extensions: Sequence[str]) -> dict[str, bool]: ...

    async def can_write(self, sub_topic: str, claims: Mapping[str, Any], headers: Mapping[str, str],
                        extension: str) -> bool: ...

    async def replay(self, sub_topic: str, since_ms: int, limit: int) -> Sequence[ReplayRowLike]: ...

    async def persist(self, sub_topic: str, claims: Mapping[str, Any], headers: Mapping[str, str], event: str,
                      data: bytes, binary: bool, ttl: int | None) -> str | None: ...


class EventSink(Protocol):
    """Where function events go (README "Functions"): every broadcast, join, leave, presence
    change and connection, reported once by the node where it originates."""

    def observe(self, ev: RealtimeEvent) -> None:
        """Synchronous, no I/O, never raises."""

    def metrics(self) -> Mapping[str, Mapping[str, float]]:
        """Per trigger: counters and latencies, for /metrics."""


class Gatekeeper(Protocol):
    """``authorize_join`` / ``authorize_send`` gates: allow, deny with a reason, or rewrite."""

    def has_gate(self, kind: str, sub_topic: str, event: str | None = None) -> bool: ...

    async def gate_join(self, sub_topic: str, claims: Mapping[str, Any],
                        config: Mapping[str, Any]) -> GateResult: ...

    async def gate_send(self, sub_topic: str, event: str, payload: Any,
                        claims: Mapping[str, Any]) -> GateResult: ...


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def broadcast_event(b: Broadcast) -> tuple[str | None, Any]:
    """(user event, payload) of a fan-out message, as a function sees it."""
    if b.event is not None:
        if b.binary:
            return b.event, b.data
        return b.event, orjson.loads(b.data)
    payload = b.payload if isinstance(b.payload, dict) else {}
    event = payload.get("event")
    return (event if isinstance(event, str) else None), payload.get("payload")


#: the stream every node subscribes to for presence replication and heartbeats
CONTROL_STREAM = StreamKey("__cluster")
#: the stream the replication leader shares decoded transactions on (every node routes them)
CDC_STREAM = StreamKey("__cdc")



class Node:
    def __init__(self, settings: Settings, pubsub: PubSub, node_id: str | None = None,
                 changes: ChangeFeed | None = None, authorizer: Authorizer | None = None,
                 services: Sequence[Service] = (), events: EventSink | None = None,
                 gatekeeper: Gatekeeper | None = None) -> None:
        self.settings = settings
        self.pubsub = pubsub
        self.changes = changes
        self.authorizer = authorizer
        self.services = list(services)
        #: function events (README "Functions"); the node and the transport report to it
        self.functions = events
        #: function gates on joins and sends, when any are configured
        self.gatekeeper = gatekeeper
        self._streaming: list[asyncio.Future[None]] = []
        self.limits = TenantLimits(
            max_concurrent_users=settings.max_concurrent_users,
            max_events_per_second=settings.max_events_per_second,
            max_joins_per_second=settings.max_joins_per_second,
            max_presence_events_per_second=settings.max_presence_events_per_second,
        )
        self.node_id = node_id or os.urandom(6).hex()
        self.hub = Hub()
        #: presence diffs waiting for their topic's coalescing window (``_fanout_diffs``)
        self._pending_diffs: dict[StreamKey, list[tuple[PresenceDiff, Hashable | None]]] = {}
        #: ``GET /api/trace`` watchers (tracebus.py)
        self.trace = TraceBus()
        if changes is not None:
            changes.trace = self.trace
        self.replica = PresenceReplica(self.node_id)
        self.refs = RefGenerator(os.urandom(6))
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.start(self._deliver)
        self.pubsub.subscribe(CONTROL_STREAM)
        self._control(PresenceReplica.sync_op())  # ask every node for its members
        self._heartbeat = asyncio.create_task(self._heartbeats(), name="cluster-heartbeat")
        if self.changes is not None:
            self.pubsub.subscribe(CDC_STREAM)
            self.changes.attach(
                lambda op: self.pubsub.publish(Envelope(CDC_STREAM, self.node_id, control=share_to_wire(op))))
            # a node that reads the slot itself learns its feed's state without the backbone
            self.changes.add_state_listener(self._feed_state_changed)
            await self.changes.start()
        for service in self.services:
            await service.start()

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for service in reversed(self.services):
            await service.stop()
        if self.changes is not None:
            await self.changes.stop()
        await self.pubsub.close()

    # streams ---------------------------------------------------------------------------------

    def subscribe(self, stream: StreamKey, sid: Hashable, sub: Subscriber,
                  skip_ids: frozenset[str] = frozenset(), offsets: bool = False, hold: bool = False) -> None:
        """``offsets``: the channel's broadcasts carry their offsets; ``hold``: keep live ones
        back until :meth:`release_resume` (protocol.md §4.10)."""
        if offsets:
            sub = Offsets(sub, skip_ids, hold)
        elif skip_ids:
            sub = SkipIds(sub, skip_ids)
        if self.hub.add(stream, sid, sub):
            self.pubsub.subscribe(stream)

    def prepare_stream(self, stream: StreamKey) -> Awaitable[None] | None:
        """Subscribe the backbone to a stream this node does not carry yet; returns what to
        wait for before a client may be told it joined (``PubSub.confirmed``)."""
        if self.hub.count(stream):
            return None
        self.pubsub.subscribe(stream)
        return self.pubsub.confirmed(stream)

    def unsubscribe(self, stream: StreamKey, sid: Hashable) -> None:
        if self.hub.remove(stream, sid):
            self.pubsub.unsubscribe(stream)

    def publish(self, stream: StreamKey, b: Broadcast, exclude: Hashable | None = None,
                claims: Mapping[str, Any] | None = None) -> None:
        """Fan ``b`` out on every node; a function sees it once, as a ``broadcast`` event,
        whatever its source (a client, REST, the database, a function's own reply)."""
        self.pubsub.publish(Envelope(stream, self.node_id, broadcast=b, exclude=exclude, accepted=time.perf_counter()))
        if self.functions is not None:
            sub_topic = b.topic[len(TOPIC_PREFIX):]
            self.functions.observe(RealtimeEvent("broadcast", sub_topic, *broadcast_event(b), claims))

    def _deliver(self, env: Envelope) -> None:
        if env.stream == CONTROL_STREAM:
            if env.control is not None:
                self._on_control(env.origin, env.control)
            return
        if env.stream == CDC_STREAM:
            op = share_from_wire(env.control) if env.control is not None else None
            if op is not None and self.changes is not None:
                self.changes.handle_shared(op)
                self._feed_state_changed()
            return
        if env.broadcast is not None:
            exclude = env.exclude if env.origin == self.node_id else None
            if self.trace.active and self.trace.watching(env.broadcast.topic[len(TOPIC_PREFIX):]):
                self._trace_broadcast(env.stream, env.broadcast, exclude)
            delivered = self.hub.fanout_broadcast(env.stream, env.broadcast, exclude, env.offset, env.epoch)
            if delivered:  # §8: every per-channel delivery counts toward events/s
                self.limits.events.add(time.time(), delivered)
                if env.accepted is not None:
                    metrics.PUBLISH_TO_WRITE.observe(time.perf_counter() - env.accepted)

    def _trace_broadcast(self, stream: StreamKey, b: Broadcast, exclude: Hashable | None) -> None:
        written: list[Any] = []
        skipped: list[dict[str, Any]] = []
        for sid, why in self.hub.outcomes(stream, b, exclude):
            socket = sid[0] if isinstance(sid, tuple) else sid
            if why is None:
                written.append(socket)
            else:
                skipped.append({"socket": socket, "why": why})
        event = b.event if b.event is not None else (b.payload.get("event") if isinstance(b.payload, dict) else None)
        size = len(b.data) if b.event is not None else len(orjson.dumps(b.payload))
        self.trace.emit(b.topic[len(TOPIC_PREFIX):], {
            "kind": "broadcast", "event": event, "private": stream.startswith("priv:"), "bytes": size,
            "node": self.node_id, "written": written, "skipped": skipped})

    # resume (protocol.md §4.10) ------------------------------------------------------------

    @property
    def resume_enabled(self) -> bool:
        return self.pubsub.resume_enabled

    async def broadcast_history(self, stream: StreamKey, epoch: str, after: int) -> tuple[History[Broadcast], Gap | None]:
        return await self.pubsub.history(stream, epoch, after)

    def release_resume(self, stream: StreamKey, sid: Hashable, epoch: str,
                       replay: Sequence[tuple[int, Broadcast]], covered: int) -> None:
        self.hub.release(stream, sid, epoch, replay, covered)

    # replication readiness (protocol.md §3.7) -----------------------------------------------

    async def replication_streaming(self) -> None:
        """Returns once database changes flow.  The feed's state travels on the shared CDC
        stream (from the reading node), so a waiter is woken by the delivery that changed it."""
        if self.changes is not None and self.changes.state == "streaming":
            return
        waiter = asyncio.get_running_loop().create_future()
        self._streaming.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._streaming:
                self._streaming.remove(waiter)

    def _feed_state_changed(self) -> None:
        if self._streaming and self.changes is not None and self.changes.state == "streaming":
            self._wake_streaming()

    def _wake_streaming(self) -> None:
        waiters, self._streaming = self._streaming, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # database broadcast (protocol.md §4.7) ---------------------------------------------------

    def publish_from_database(self, msg_id: str, sub_topic: str, event: str, private: bool,
                              data: bytes, binary: bool) -> None:
        """A committed insert into ``realtime.messages``: a user broadcast with ``meta.id``,
        dropped (with a log line) when oversized or while the events/s limit is triggered."""
        now = time.time()
        if len(data) > self.settings.max_payload_bytes:
            log.warning("dropping database broadcast %s: payload of %d bytes exceeds the limit", msg_id, len(data))
            return
        if self.limits.events_exceeded(now):
            log.warning("dropping database broadcast %s: too many messages per second", msg_id)
            return
        self.limits.events.add(now)
        b = Broadcast(TOPIC_PREFIX + sub_topic, event=event, data=data, binary=binary, meta={"id": msg_id})
        self.publish(stream_key(private, sub_topic), b)

    # private channels (protocol.md §7.3) -----------------------------------------------------

    async def authorize(self, req: Authorize, headers: Mapping[str, str]) -> AuthResult:
        """Run the policy checks an ``Authorize`` effect asks for; never raises."""
        if self.authorizer is None:
            return AuthResult({}, error="no database")
        granted: dict[str, bool] = {}
        try:
            reads = [c.split("_")[0] for c in req.checks if c.endswith("_read")]
            if reads:
                seen = await self.authorizer.can_read(req.sub_topic, req.claims, headers, reads)
                granted.update({f"{ext}_read": bool(seen.get(ext)) for ext in reads})
            for check in (c for c in req.checks if c.endswith("_write")):
                ext = check.split("_")[0]
                granted[check] = await self.authorizer.can_write(req.sub_topic, req.claims, headers, ext)
            replayed: tuple[ReplayedMessage, ...] = ()
            if req.replay is not None and granted.get(BROADCAST_READ):
                rows = await self.authorizer.replay(req.sub_topic, req.replay[0], req.replay[1])
                replayed = tuple(ReplayedMessage(r.id, r.event, r.payload_json, r.binary) for r in rows)
        except Exception as exc:  # noqa: BLE001 - §7.3: evaluation errors count as denial
            log.warning("could not evaluate policies for %s: %s", req.sub_topic, exc)
            return AuthResult({}, error=str(exc))
        return AuthResult(granted, replayed)

    async def persist(self, sub_topic: str, claims: Mapping[str, Any], headers: Mapping[str, str], event: str,
                      data: bytes, binary: bool, ttl: int | None) -> PersistResult:
        """§4.9: store a private broadcast for replay if the persistence policy allows it;
        never raises (a failure is logged and answered without an id)."""
        if self.authorizer is None:
            return PersistResult()
        try:
            msg_id = await self.authorizer.persist(sub_topic, claims, headers, event, data, binary, ttl)
        except Exception as exc:  # noqa: BLE001 - answered as UnableToPersistMessage
            log.warning("could not persist a broadcast on %s: %s", sub_topic, exc)
            return PersistResult()
        return PersistResult(msg_id) if msg_id is not None else PersistResult(denied=True)

    # presence (protocol.md §5), replicated across nodes (protocol/replica.py) --------------

    def track(self, stream: StreamKey, owner: Hashable, key: str, payload: Mapping[str, Any]) -> bool:
        """Track ``owner``'s presence; ``False`` (nothing changes) when the topic's state would
        grow past ``max_presence_state_bytes``."""
        size = entry_size(key, payload)
        if self.replica.size_with(stream, owner, size) > self.settings.max_presence_state_bytes:
            return False
        self._member_op(self.replica.track_op(stream, owner, key, payload, self.refs.next(), size), owner)
        return True

    def untrack(self, stream: StreamKey, owner: Hashable) -> None:
        op = self.replica.untrack_op(stream, owner)
        if op is not None:
            self._member_op(op, owner)

    def _member_op(self, op: MemberOp, owner: Hashable | None = None) -> None:
        """Our own presence change is applied and its diff fanned out here, synchronously,
        before the caller replies to the push (Phoenix's tracker does the same: the diff
        precedes the reply, §5.1); the other nodes apply it when it reaches them."""
        diffs, _ = self.replica.apply(self.node_id, op, time.monotonic())
        self._fanout_diffs(diffs, owner)
        self._control(op)

    def presence_counts(self, stream: StreamKey) -> tuple[int, int]:
        """(presence keys, metas) of the topic on the whole cluster (every node has a replica)."""
        return self.replica.counts(stream)

    def presence_state(self, stream: StreamKey) -> dict[str, Any]:
        """The ``presence_state`` payload (the same object until the state changes: read only)."""
        self._flush_diffs(stream)  # a joiner's state comes after what is due to the others
        return self.replica.state_payload(stream)

    def presence_state_json(self, stream: StreamKey) -> orjson.Fragment:
        """``presence_state`` as JSON, encoded once per change of the state, for the wire."""
        self._flush_diffs(stream)
        return orjson.Fragment(self.replica.state_json(stream))

    def _control(self, op: Op) -> None:
        self.pubsub.publish(Envelope(CONTROL_STREAM, self.node_id, control=encode_op(op)))

    def _on_control(self, origin: str, raw: dict[str, Any]) -> None:
        if origin == self.node_id:
            return  # our own ops were applied when they were made (``_member_op``)
        op = decode_op(raw)
        if op is None:
            log.debug("ignoring an unreadable control message from node %s", origin)
            return
        diffs, replies = self.replica.apply(origin, op, time.monotonic())
        self._fanout_diffs(diffs)
        for reply in replies:
            self._control(reply)

    def _fanout_diffs(self, diffs: list[tuple[StreamKey, PresenceDiff]], owner: Hashable | None = None) -> None:
        """§5.2: the joins and leaves of a topic within ``presence_coalesce_ms`` go out as one
        diff, so a room that n members join costs each member a few diffs, not n.  The channel
        whose push caused a diff (``owner``) gets it at once, before its push's reply (§5.1),
        and later the others' changes of the window without its own again."""
        window = self.settings.presence_coalesce_ms / 1000
        if window <= 0:
            for stream, diff in diffs:
                self._send_diff(stream, diff)
            return
        for stream, diff in diffs:
            if owner is not None:
                self._send_diff(stream, diff, only=owner)
            pending = self._pending_diffs.get(stream)
            if pending is None:
                self._pending_diffs[stream] = [(diff, owner)]
                asyncio.get_running_loop().call_later(window, self._flush_diffs, stream)
            else:
                pending.append((diff, owner))

    def _flush_diffs(self, stream: StreamKey) -> None:
        pending = self._pending_diffs.pop(stream, None)
        if not pending:
            return
        owners = {owner for _, owner in pending if owner is not None}
        merged = merge_diffs(diff for diff, _ in pending)
        if merged is not None:
            self._send_diff(stream, merged, exclude=owners)
        for owner in owners:  # each pusher: the window's other changes (it had its own already)
            others = merge_diffs(diff for diff, by in pending if by != owner)
            if others is not None:
                self._send_diff(stream, others, only=owner)

    def _send_diff(self, stream: StreamKey, diff: PresenceDiff, *, only: Hashable | None = None,
                   exclude: Collection[Hashable] = ()) -> None:
        msg = Message(topic_of(stream), "presence_diff", diff.payload())
        delivered = (self.hub.send_one(stream, only, msg) if only is not None
                     else self.hub.fanout_message(stream, msg, exclude))
        if delivered:  # §5.7: each delivered diff counts toward presence events/s
            self.limits.presence.add(time.time(), delivered)

    async def _heartbeats(self) -> None:
        """Liveness and counters for the other nodes; expiry of nodes that went silent."""
        while True:
            now = time.time()
            limits = self.limits
            self._control(self.replica.heartbeat_op(limits.users, limits.events.rate(now),
                                                    limits.joins.rate(now), limits.presence.rate(now)))
            self._fanout_diffs(self.replica.expire(time.monotonic()))
            users, events, joins, presence = self.replica.cluster_totals()
            limits.remote_users, limits.remote_events = users, events
            limits.remote_joins, limits.remote_presence = joins, presence
            await asyncio.sleep(HEARTBEAT_S / 2)

    # postgres_changes (protocol.md §6) -------------------------------------------------------

    def subscribe_postgres(self, conn_id: int, peer: ChannelPeer, topic: str, join_ref: str | None,
                           bindings: Sequence[dict[str, Any]], claims: Mapping[str, Any],
                           ready: Callable[[errors.SubscribeError | None], None] | None = None, *,
                           offsets: bool = False, resume_from: tuple[int, int] | None = None,
                           snapshot: bool = True) -> None:
        """Without a database every binding fails with a ``system`` error (§6.3), or is
        reported to ``ready`` (never from inside this call).  ``offsets``/``resume_from``:
        §4.10."""
        if self.changes is not None:
            self.changes.subscribe(conn_id, peer, topic, join_ref, bindings, claims, ready, offsets, resume_from,
                                   snapshot)
            return
        if ready is not None:
            asyncio.get_running_loop().call_soon(ready, errors.PostgresNotConfigured())
            return
        payload = {
            "extension": "postgres_changes",
            "status": "error",
            "message": errors.PostgresNotConfigured().message,
            "channel": topic[len(TOPIC_PREFIX) :],
        }
        peer.send(Message(topic, "system", payload, ref=None, join_ref=join_ref))

    def unsubscribe_postgres(self, conn_id: int, topic: str) -> None:
        if self.changes is not None:
            self.changes.unsubscribe(conn_id, topic)
