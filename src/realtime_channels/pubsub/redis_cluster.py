"""Redis Cluster backbone: sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7) across the shards.

Theory of operation
-------------------
Stream ``s`` of a node with prefix ``p`` is the shard channel ``{<p><s>}`` (braces and ``%``
in the name percent-escaped, so the braces shown are the only ones and the whole name is the
hash tag); its retention keys are ``{<p><s>}:m`` and ``{<p><s>}:l`` (redis_log.py), in the
same slot, so the publish script can declare its keys and SPUBLISH to a channel of their slot.
Streams, presence replication and shared database changes included (they are streams too),
spread over the slots by name, tenant prefix included.

:class:`RedisClusterPubSub` reads the slot map (``CLUSTER SLOTS``) from any node it knows (the
configured one first, then every master and replica of the last map) and runs one
:class:`~.redis.RedisPubSub` session machine per master, a *link*, switched to sharded
commands: its own publish connection, subscribe connection, outbox, writer and reader.  Each
stream belongs to the link of its slot's master, so everything the single-Redis backend
guarantees per stream holds per link: publish order (one connection publishes a stream),
at-most-once delivery, own envelopes echoed, ``confirmed`` once SSUBSCRIBE is confirmed, and
local delivery while that link is down.  All links share one sender id and one sequence, and a
link drops an own envelope it is not waiting for (already delivered locally), so an envelope
is never delivered twice, even when its stream moved between links.

Topology changes
----------------
The slot map is read again when a link loses its session (its master died), when a publish is
redirected (MOVED, ASK or TRYAGAIN), when a master unsubscribes a channel by itself
(``sunsubscribe`` push: its slot moved), every ``REFRESH_IDLE_S`` and, while anything is off,
every ``REFRESH_MIN_S`` doubling to ``REFRESH_MAX_S``.  A new map moves streams to the link of
their slot's new master (created as needed; the new master is SSUBSCRIBEd when that link
connects) and closes links of nodes that are no longer masters.  When a master dies, its
streams are delivered locally only until a replica is promoted and the map says so: ``health``
is ``degraded`` from the moment a link is down until every master's link is connected again.

A redirected publish did not run, so it is *held* with every later publish of its slot, in
order, while the link goes on serving its other slots; after the next read of the map they are
sent again, renumbered, on the link that serves the slot then (behind its subscription, so
own envelopes still come back), or delivered locally if that link is down.  A slot moved by
resharding therefore costs its streams a delay, not an outage, and nothing is lost or doubled.
A link whose node left the map while still connected (a manual failover demotes a master that
stays up) hands its queued publishes over the same way; what it had sent but not yet seen come
back is delivered locally at once, since that echo can no longer arrive through a closed link.

Presence replication travels on one stream per tenant (node.py's ``CONTROL_STREAM``), so it
lives on the shard of that stream's slot; topics spread over all shards.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisError, TryAgainError

from ..protocol.codec import Broadcast
from . import Deliver, Envelope, Health
from . import redis_log
from .redis import _EVAL, _PUB, _SUB, RedisPubSub, State, _Op
from .redis_session import Session, describe, redact
from .retention import Gap, History, RetentionLimits
from .wire import SENDER_LEN, read_header, with_seq

log = logging.getLogger(__name__)

OnState = Callable[[State], None]
Address = tuple[str, int]
#: ``(first slot, last slot, master)`` sorted by first slot, and every node of the map
Topology = tuple[tuple[tuple[int, int, Address], ...], frozenset[Address]]

SLOTS = 16384
#: replies meaning "that slot is not served here now": the command did not run
REDIRECTS = (MovedError, AskError, TryAgainError)
#: operations a link could not run, with their envelopes (``None``: not subscribed here)
Held = list[tuple[_Op, Envelope | None]]
REFRESH_MIN_S = 0.1
REFRESH_MAX_S = 1.0
REFRESH_IDLE_S = 30.0
#: reads of the map that may still name the master that unsubscribed a channel by itself
ORPHAN_PATIENCE = 3
DISCOVER_TIMEOUT_S = 1.0
START_WAIT_S = 10.0


def escape(name: str) -> str:
    """``name`` without braces (``%``-escaped, so different names stay different)."""
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def hash_tag(prefix: str, stream: str) -> str:
    return escape(prefix + stream) or "%"


def shard_channel(prefix: str, stream: str) -> str:
    return "{" + hash_tag(prefix, stream) + "}"


def stream_slot(prefix: str, stream: str) -> int:
    return int(key_slot(hash_tag(prefix, stream).encode()))


def node_url(url: str, address: Address) -> str:
    """``url`` (scheme, credentials, options) pointed at another node."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    netloc = (auth + "@" if auth else "") + f"{host}:{address[1]}"
    return urlunsplit(parts._replace(netloc=netloc))


def parse_slots(reply: object, asked: Address) -> Topology:
    """A ``CLUSTER SLOTS`` reply as a :data:`Topology` (an empty host means the node asked)."""
    def address(node: object) -> Address:
        assert isinstance(node, (list, tuple))
        host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
        return (host if host and host != "?" else asked[0]), int(node[1])

    ranges: list[tuple[int, int, Address]] = []
    nodes: set[Address] = set()
    assert isinstance(reply, (list, tuple))
    for entry in reply:
        start, end, master, *replicas = entry
        ranges.append((int(start), int(end), address(master)))
        nodes.add(address(master))
        nodes.update(address(r) for r in replicas)
    ranges.sort()
    return tuple(ranges), frozenset(nodes)


def covers_all(topology: Topology) -> bool:
    expected = 0
    for start, end, _ in topology[0]:
        if start != expected:
            return False
        expected = end + 1
    return expected == SLOTS


class _ShardLink(RedisPubSub):
    """The streams of one master: a :class:`RedisPubSub` over sharded pub/sub."""

    MESSAGE, SUBSCRIBED, UNSUBSCRIBED = "smessage", "ssubscribe", "sunsubscribe"
    PUBLISH_LUA = redis_log.SPUBLISH_LUA
    DELIVER_UNKNOWN_ECHO = False

    def __init__(self, owner: RedisClusterPubSub, address: Address | None) -> None:
        where = f"{address[0]}:{address[1]}" if address else "no-master"
        super().__init__(node_url(owner.url, address) if address else owner.url, prefix=owner.prefix,
                         node_id=f"{owner.node_id}@{where}", on_state=self._state_changed,
                         limits=owner.limits)
        self.owner = owner
        self.address = address
        self._sender = owner.sender
        #: channel -> SUNSUBSCRIBE replies still expected in this session
        self._asked: dict[str, int] = {}
        #: slot -> publish operations redirected (MOVED, ASK, TRYAGAIN), oldest first; every
        #: later one of the slot waits behind them until the slot map is read again
        self._held: dict[int, Held] = {}

    def launch(self, deliver: Deliver) -> None:
        """Start connecting in the background (``start`` without the wait)."""
        self._deliver = deliver
        self._supervisor = asyncio.create_task(self._supervise(), name=f"redis-cluster-{self.node_id}")

    def attach(self, deliver: Deliver) -> None:
        """Deliver locally, never connect (the streams of slots no master is known for)."""
        self._deliver = deliver

    def forget(self, stream: str) -> None:
        """Drop ``stream`` without telling the server (it no longer serves the slot)."""
        self._streams.discard(stream)
        fut = self._confirmations.pop(self._channel(stream), None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def resubscribe(self, stream: str) -> None:
        """SSUBSCRIBE ``stream`` again (the server unsubscribed it but still owns its slot)."""
        if stream in self._streams and self._session is not None:
            self._push((_SUB, self._channel(stream), b""))

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def _op_slot(self, op: _Op) -> int:
        kind, name, _ = op
        return stream_slot(self.prefix, name) if kind == _EVAL else int(key_slot(name.encode()))

    def _take_unechoed(self, seq: int) -> Envelope | None:
        for i, (pending, env) in enumerate(self._unechoed):
            if pending == seq:
                del self._unechoed[i]
                return env
            if pending > seq:
                break
        return None

    def release(self, everything: bool = False) -> dict[int, Held]:
        """Every held operation and, behind them, the queued operations of the same slots (in
        order): for the link that serves those slots now (``adopt``).  ``everything``: every
        queued publish too (this link is closing), and what was sent but has not come back is
        delivered locally now (its echo never will be)."""
        held, self._held = self._held, {}
        if everything:
            queued = {read_header(op[2])[1] for op in self._ops if op[0] in (_PUB, _EVAL)}
            sent = [env for seq, env in self._unechoed if seq not in queued]
            self._unechoed = deque((seq, env) for seq, env in self._unechoed if seq in queued)
            for env in sent:
                self._deliver_local(env)
        if held or everything:
            keep = []
            for op in self._ops:
                slot = self._op_slot(op) if op[0] in (_PUB, _EVAL) else -1
                if slot in held or (everything and slot >= 0):
                    held.setdefault(slot, []).append((op, self._take_unechoed(read_header(op[2])[1])))
                else:
                    keep.append(op)
            self._ops.clear()  # in place: the writer holds this deque
            self._ops.extend(keep)
        return held


    def adopt(self, entries: Held) -> None:
        """Publish ``entries`` (released by a link, maybe this one) after what is queued here,
        renumbered so that this link's echo bookkeeping stays in publish order."""
        for (kind, name, frame), env in entries:
            if self._state != "connected" or self._session is None:
                self.dropped += 1
                if env is not None:
                    self._deliver_local(env)
                continue
            seq = self.owner.next_seq()
            if env is not None and env.stream in self._streams:
                self._unechoed.append((seq, env))
            self._push((kind, name, with_seq(frame, seq)))

    async def _send_batch(self, s: Session, batch: list[_Op]) -> None:
        sendable: list[_Op] = []
        for op in batch:
            slot = self._op_slot(op)
            if slot in self._held:
                self._held[slot].append((op, self._take_unechoed(read_header(op[2])[1])))
            else:
                sendable.append(op)
        if not sendable:
            return
        # the envelopes awaited as echoes, in case a reply says the command did not run: the
        # reader may meanwhile drop them from _unechoed on the echo of a later one
        seqs = {read_header(op[2])[1] for op in sendable}
        lowest = min(seqs)
        awaited: dict[int, Envelope] = {}
        for seq, env in reversed(self._unechoed):
            if seq < lowest:
                break
            if seq in seqs:
                awaited[seq] = env
        pipe = s.pub.pipeline(transaction=False)
        for op in sendable:
            self._queue_op(pipe, op)
        results = await pipe.execute(raise_on_error=False)
        redirected: list[str] = []
        for op, result in zip(sendable, results, strict=True):
            if isinstance(result, REDIRECTS):
                seq = read_header(op[2])[1]
                self._take_unechoed(seq)
                self._held.setdefault(self._op_slot(op), []).append((op, awaited.get(seq)))
                redirected.append(describe(result))
            elif isinstance(result, Exception):
                raise result
        if redirected:
            self.owner._redirected(self, redirected[0])

    def _enter_degraded(self, reason: str) -> None:
        # held envelopes come before the slot's queued ones: delivered locally first
        held, self._held = self._held, {}
        for entries in held.values():
            for _op, env in entries:
                if env is not None:
                    self._deliver_local(env)
        super()._enter_degraded(reason)

    def _state_changed(self, state: State) -> None:
        self.owner._link_state(self, state)

    def _channel(self, stream: str) -> str:
        return shard_channel(self.prefix, stream)

    def _keys(self, stream: str) -> tuple[str, str]:
        return redis_log.keys("", hash_tag(self.prefix, stream))

    def _next_seq(self) -> int:
        return self.owner.next_seq()

    def _publish_to(self, target: Any, channel: str, frame: bytes) -> Any:
        return target.spublish(channel, frame)

    async def _run_session(self) -> str:
        self._asked.clear()
        return await super()._run_session()

    async def _send_channels(self, s: Session, kind: int, names: list[str]) -> None:
        # SSUBSCRIBE/SUNSUBSCRIBE take channels of one slot per command
        by_slot: dict[int, list[str]] = {}
        for name in names:
            by_slot.setdefault(int(key_slot(name.encode())), []).append(name)
        for group in by_slot.values():
            if kind == _SUB:
                await s.ps.ssubscribe(*group)
            else:
                for name in group:
                    self._asked[name] = self._asked.get(name, 0) + 1
                await s.ps.sunsubscribe(*group)

    def _is_reply(self, s: Session, kind: str, channel: str) -> bool:
        if kind != self.UNSUBSCRIBED:
            return True
        pending = self._asked.get(channel, 0)
        if pending:
            if pending == 1:
                del self._asked[channel]
            else:
                self._asked[channel] = pending - 1
            return True
        self.owner._unsubscribed_by_server(self, channel)
        return False


class RedisClusterPubSub:
    """:class:`~realtime_channels.pubsub.PubSub` over a Redis Cluster's sharded pub/sub."""

    def __init__(self, url: str, *, prefix: str = "rc:", node_id: str | None = None,
                 on_state: OnState | None = None, limits: RetentionLimits | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.node_id = node_id or os.urandom(6).hex()
        self.on_state = on_state
        self.limits = limits or RetentionLimits()
        self.sender = os.urandom(SENDER_LEN)
        self._seq = 0
        self._state: State = "degraded"
        self._deliver: Deliver | None = None
        self._topology: Topology = ((), frozenset())
        self._starts: list[int] = []
        self._links: dict[Address, _ShardLink] = {}
        self._unmapped = _ShardLink(self, None)
        #: stream -> the link it is subscribed on
        self._owner: dict[str, _ShardLink] = {}
        #: streams a master unsubscribed by itself, to place again after the next refresh
        #: (and how many reads of the map since then still named the same master)
        self._orphans: dict[str, int] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._refresh = asyncio.Event()
        self._maintainer: asyncio.Task[None] | None = None
        self._closed = False
        self._announced = False
        #: a publish was redirected since the last read of the map / since things were calm
        self._redirecting = self._redirect_logged = False

    # --- state ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def health(self) -> Health:
        return Health(self._state)

    @property
    def resume_enabled(self) -> bool:
        return self.limits.enabled

    @property
    def links(self) -> dict[Address, _ShardLink]:
        """Master address -> its link (read-only use: tests and diagnostics)."""
        return dict(self._links)

    def shard_of(self, stream: str) -> Address | None:
        """The master a subscribed ``stream`` is subscribed on (``None``: none known)."""
        link = self._owner.get(stream)
        return link.address if link is not None else None

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _update_state(self) -> None:
        up = (not self._closed and covers_all(self._topology)
              and all(link.state == "connected" for link in self._links.values()))
        state: State = "connected" if up else "degraded"
        if state == self._state:
            return
        self._state = state
        if state == "connected":
            log.info("redis cluster pubsub %s: CONNECTED to %d master(s) of %s", self.node_id,
                     len(self._links), redact(self.url))
        else:
            down = sorted(link.node_id for link in self._links.values() if link.state != "connected")
            log.warning("redis cluster pubsub %s: DEGRADED (%s); the streams of a shard without a "
                        "connected master are delivered locally only", self.node_id,
                        ", ".join(down) + " not connected" if down else "no complete slot map")
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("redis cluster pubsub %s: on_state callback failed", self.node_id)

    def _link_state(self, link: _ShardLink, state: State) -> None:
        if self._closed or link.address is None or self._links.get(link.address) is not link:
            return
        if state == "degraded":
            self._refresh.set()
        self._update_state()

    def _redirected(self, link: _ShardLink, reason: str) -> None:
        # logged once until things are calm again (a migrating slot keeps answering ASK)
        log.log(logging.DEBUG if self._redirect_logged else logging.INFO,
                "redis cluster pubsub %s: %s was redirected (%s); its slot's publishes wait for "
                "the slot map", self.node_id, link.node_id, reason)
        self._redirect_logged = self._redirecting = True
        self._refresh.set()

    def _unsubscribed_by_server(self, link: _ShardLink, channel: str) -> None:
        for stream, owner in self._owner.items():
            if owner is link and link._channel(stream) == channel:
                self._orphans[stream] = 0
                log.info("redis cluster pubsub %s: %s unsubscribed %r (its slot moved); refreshing "
                         "the slot map", self.node_id, link.node_id, channel)
                self._refresh.set()
                return

    # --- PubSub protocol ------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        """Read the slot map and connect to every master; returns once each link connected or
        failed a first time (then those shards run degraded and keep retrying)."""
        self._deliver = deliver
        self._unmapped.attach(deliver)
        topology = await self._discover()
        if topology is not None:
            self._apply(topology)
        else:
            self._announced = True
            log.warning("redis cluster pubsub %s: no node of %s answers CLUSTER SLOTS; local delivery "
                        "only, retrying", self.node_id, redact(self.url))
        self._maintainer = asyncio.create_task(self._maintain(), name=f"redis-cluster-{self.node_id}")
        waits = [asyncio.create_task(link._settled.wait()) for link in self._links.values()]
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=START_WAIT_S)
            for task in pending:
                task.cancel()

    async def close(self) -> None:
        self._closed = True
        self._deliver = None
        task, self._maintainer = self._maintainer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        links = [*self._links.values(), self._unmapped]
        self._links.clear()
        self._owner.clear()
        for link in links:
            await link.close()
        if self._closing:
            await asyncio.wait(self._closing)

    def subscribe(self, stream: str) -> None:
        if self._closed or stream in self._owner:
            return
        link = self._link_for(stream)
        self._owner[stream] = link
        link.subscribe(stream)

    def unsubscribe(self, stream: str) -> None:
        link = self._owner.pop(stream, None)
        self._orphans.pop(stream, None)
        if link is not None:
            link.unsubscribe(stream)

    def confirmed(self, stream: str) -> asyncio.Future[None] | None:
        link = self._owner.get(stream)
        return link.confirmed(stream) if link is not None else None

    def publish(self, envelope: Envelope) -> None:
        if not self._closed:
            self._link_for(envelope.stream).publish(envelope)

    async def history(self, stream: str, epoch: str, after: int) -> tuple[History[Broadcast], Gap | None]:
        return await self._link_for(stream).history(stream, epoch, after)

    # --- routing --------------------------------------------------------------------------

    def _link_for(self, stream: str) -> _ShardLink:
        return self._link_of_slot(stream_slot(self.prefix, stream))

    def _link_of_slot(self, slot: int) -> _ShardLink:
        ranges = self._topology[0]
        i = bisect.bisect_right(self._starts, slot) - 1
        if i >= 0 and ranges[i][0] <= slot <= ranges[i][1]:
            link = self._links.get(ranges[i][2])
            if link is not None:
                return link
        return self._unmapped

    def _apply(self, topology: Topology) -> None:
        """Route by ``topology`` from now on: links for new masters, streams moved, links of
        former masters closed.  No await: publish and subscribe see the old map or the new."""
        assert self._deliver is not None
        previous = self._topology
        self._topology = topology
        self._starts = [start for start, _, _ in topology[0]]
        masters = {master for _, _, master in topology[0]}
        for address in sorted(masters - self._links.keys()):
            link = _ShardLink(self, address)
            self._links[address] = link
            link.launch(self._deliver)
        released: list[tuple[int, Held]] = []
        for address in [a for a in self._links if a not in masters]:
            gone = self._links.pop(address)
            for stream in [s for s, owner in self._owner.items() if owner is gone]:
                gone.forget(stream)
                self._place(stream)
            released.extend(gone.release(everything=True).items())
            self._close_later(gone)
        orphans, self._orphans = self._orphans, {}
        for stream, link in list(self._owner.items()):
            if self._link_for(stream) is not link:
                # no SUNSUBSCRIBE: the old master no longer serves the slot (it would answer
                # MOVED), and it drops the subscription itself when it lets the slot go
                link.forget(stream)
                self._place(stream)
            elif stream in orphans:
                # the map may lag behind the master that let the slot go: ask again a few
                # times before subscribing there again
                if orphans[stream] >= ORPHAN_PATIENCE:
                    link.resubscribe(stream)
                else:
                    self._orphans[stream] = orphans[stream] + 1
        # redirected publishes go out again, on the link of their slot now, behind the
        # subscriptions just made (the writer publishes only behind confirmed ones)
        for link in self._links.values():
            released.extend(link.release().items())
        for slot, entries in released:
            self._link_of_slot(slot).adopt(entries)
        if released:
            self._redirecting = True  # calm only once a back-off period passes without a redirect
        if previous[0] != topology[0]:
            log.info("redis cluster pubsub %s: slot map of %d master(s): %s", self.node_id, len(masters),
                     ", ".join(f"{s}-{e}@{h}:{p}" for s, e, (h, p) in topology[0]))
        self._update_state()

    def _place(self, stream: str) -> None:
        link = self._link_for(stream)
        self._owner[stream] = link
        link.subscribe(stream)

    def _close_later(self, link: _ShardLink) -> None:
        task = asyncio.create_task(link.close(), name=f"close-{link.node_id}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # --- topology -------------------------------------------------------------------------

    def _candidates(self) -> list[Address]:
        parts = urlsplit(self.url)
        seed = (parts.hostname or "127.0.0.1", parts.port or 6379)
        known = sorted(self._topology[1] - {seed})
        # masters whose link is down are asked last: they are the likeliest to be gone
        down = {a for a, link in self._links.items() if link.state != "connected"}
        return [seed, *[a for a in known if a not in down], *[a for a in known if a in down]]

    async def _discover(self) -> Topology | None:
        """The slot map as the first node that answers sees it."""
        for address in self._candidates():
            client = Redis.from_url(node_url(self.url, address), socket_timeout=DISCOVER_TIMEOUT_S,
                                    socket_connect_timeout=DISCOVER_TIMEOUT_S)
            try:
                topology = parse_slots(await client.cluster("SLOTS"), address)
            except (RedisError, OSError, ValueError, AssertionError) as exc:
                log.debug("redis cluster pubsub %s: CLUSTER SLOTS on %s:%s failed (%s)", self.node_id,
                          *address, describe(exc))
                continue
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            if topology[0]:
                return topology
        return None

    def _calm(self) -> bool:
        return (self._state == "connected" and not self._orphans and not self._redirecting
                and not any(link.holding for link in self._links.values()))

    async def _maintain(self) -> None:
        delay = REFRESH_MIN_S
        while not self._closed:
            if self._calm():
                delay = REFRESH_MIN_S
                self._redirect_logged = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._refresh.wait(), REFRESH_IDLE_S)
            else:  # something is off: read the map again at a backed-off pace
                await asyncio.sleep(delay)
                delay = min(delay * 2, REFRESH_MAX_S)
                self._redirecting = False  # set again if what is sent next is redirected too
            self._refresh.clear()
            try:
                topology = await self._discover()
            except Exception:  # a client-library surprise must not end the refreshing
                log.exception("redis cluster pubsub %s: unexpected error reading the slot map", self.node_id)
                topology = None
            if topology is not None and (topology != self._topology or not self._calm()):
                self._apply(topology)
            if topology is None and not self._announced:
                self._announced = True
                log.warning("redis cluster pubsub %s: no node of %s answers CLUSTER SLOTS; retrying",
                            self.node_id, redact(self.url))
