"""Redis backbone: each node is one :class:`RedisPubSub` on a shared Redis (design.md §2).

Theory of operation
-------------------
Per node there is one connection for PUBLISH and one for SUBSCRIBE; stream ``s`` is the Redis
channel ``prefix + s`` and envelopes travel as ``wire.encode_envelope`` bytes, encoded once
per node at ``publish``.

* ``publish`` only appends to an outbox; one *writer* task drains it in order, pipelining up to
  ``PIPELINE_MAX`` PUBLISH commands per round trip.  SUBSCRIBE/UNSUBSCRIBE requests go through
  the same outbox, and a PUBLISH is not sent while an earlier (UN)SUBSCRIBE is unconfirmed:
  the two connections are independent in Redis, so without that wait a node's publish right
  after its own subscribe could overtake the subscription and never come back.
* One *reader* task delivers what arrives, in arrival order.  Redis delivers messages of one
  publishing connection in command order, which gives per-stream publish order.  Delivery is
  filtered by the local subscription set, so nothing arrives after ``unsubscribe``/``close``.
* A node gets its own envelopes back through Redis (the PubSub guarantee the node's local
  fan-out relies on).  Every frame carries this instance's random ``sender`` id and a
  sequence number; own envelopes for locally subscribed streams are remembered until they
  come back (``_unechoed``), and the original object is delivered then (no decode).

Faults
------
Any error on either connection (or no reply to a heartbeat PING for ``DEAD_AFTER_S``) ends the
session: both connections are dropped, the state becomes ``"degraded"`` and a new session is
tried after an exponential back-off (``BACKOFF_MIN_S`` doubling to ``BACKOFF_MAX_S``).  A new
session re-SUBSCRIBEs every stream and becomes ``"connected"`` once Redis confirmed them all.

While degraded, local subscribers keep receiving this node's messages: on entering the state,
every own envelope not yet echoed is delivered locally, in publish order, and from then on
``publish`` delivers locally at once.  The remote copy of those envelopes is **dropped**, not
buffered (counted in ``dropped`` and logged when the outage ends): replaying them late would
only reorder them after newer messages on the other nodes, and the delivery guarantee is at
most once.  Envelopes from other nodes sent while this node was cut off are lost likewise.

The outbox is bounded (``OUTBOX_MAX``): if Redis cannot keep up, the session is dropped as if
the connection failed, which degrades to local delivery instead of growing without limit.

State changes are logged once each and reported to ``on_state`` (for the health endpoint).

Offsets
-------
With retention on, a broadcast is not PUBLISHed but run through ``redis_log.PUBLISH_LUA``
(EVALSHA, pipelined like PUBLISH), which gives it its stream's next offset, stores it in the
stream's retention log and PUBLISHes it with the offset; ``history`` reads that log.  While
degraded, this node's own broadcasts get offsets from a node-local ring instead, in a local
epoch (``L…``, never a Redis one): they are delivered here only, and a client that resumes
from such an offset later, with Redis back, is told of a gap of unknown size.  The same holds
for own broadcasts sent to Redis just before an outage and delivered locally when it began.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from redis.exceptions import RedisError

from ..protocol.codec import Broadcast
from . import Deliver, Envelope, Health
from . import redis_log
from .memory import BroadcastRetention
from .retention import Gap, History, RetentionLimits, new_epoch
from .redis_session import Session, SessionLost, client, describe, heartbeat, redact, stop_tasks
from .wire import SENDER_LEN, WireError, decode_envelope, encode_envelope, read_header, read_offset

log = logging.getLogger(__name__)

State = Literal["connected", "degraded"]
OnState = Callable[[State], None]

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
PIPELINE_MAX = 256
SUBSCRIBE_BATCH_MAX = 512
OUTBOX_MAX = 100_000
UNECHOED_MAX = 65_536
START_WAIT_S = 10.0

# outbox operations: (kind, channel, frame); _EVAL's "channel" is the stream
_PUB, _SUB, _UNSUB, _READY, _EVAL = range(5)
_Op = tuple[int, str, bytes]


class RedisPubSub:
    """:class:`~realtime_channels.pubsub.PubSub` over Redis PUBLISH/SUBSCRIBE.

    The class attributes and the small methods under "commands" are what
    :mod:`.redis_cluster` changes to run one instance per Redis Cluster shard over sharded
    pub/sub (SPUBLISH/SSUBSCRIBE)."""

    #: the message types of the subscribe connection
    MESSAGE, SUBSCRIBED, UNSUBSCRIBED = "message", "subscribe", "unsubscribe"
    PUBLISH_LUA = redis_log.PUBLISH_LUA
    #: an own frame that is not awaited as an echo is decoded and delivered (``False``: dropped,
    #: when the same envelopes may already have been delivered locally by a sibling instance)
    DELIVER_UNKNOWN_ECHO = True

    def __init__(self, url: str, *, prefix: str = "rc:", node_id: str | None = None,
                 on_state: OnState | None = None, limits: RetentionLimits | None = None) -> None:
        self.url = url
        self.limits = limits or RetentionLimits()
        #: offsets of own broadcasts while Redis is away (module doc "Offsets")
        self._local = BroadcastRetention(self.limits, epoch_prefix="L")
        self._publish_sha = ""
        self.prefix = prefix
        self.node_id = node_id or os.urandom(6).hex()
        self.on_state = on_state
        #: envelopes whose remote copy was dropped during the current/last outage
        self.dropped = 0
        self._sender = os.urandom(SENDER_LEN)
        self._seq = 0
        self._state: State = "degraded"
        self._announced = False  # has the first outcome (connected or not) been logged
        self._deliver: Deliver | None = None
        self._streams: set[str] = set()
        #: channel -> resolved when Redis confirms its SUBSCRIBE (see ``confirmed``)
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._ops: deque[_Op] = deque()
        self._ops_ready = asyncio.Event()
        self._unechoed: deque[tuple[int, Envelope]] = deque()
        self._session: Session | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        self._went_live = False  # the current session reached "connected"
        self._closed = False

    @property
    def state(self) -> State:
        return self._state

    @property
    def health(self) -> Health:
        return Health(self._state)

    @property
    def resume_enabled(self) -> bool:
        return self.limits.enabled

    # --- PubSub protocol ------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        """Start the connection loop; returns once the first attempt has connected or failed
        (then the node runs degraded and keeps retrying in the background)."""
        self._deliver = deliver
        self._supervisor = asyncio.create_task(self._supervise(), name=f"redis-pubsub-{self.node_id}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), START_WAIT_S)

    async def close(self) -> None:
        self._closed = True
        self._deliver = None
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._streams.clear()
        self._ops.clear()
        self._unechoed.clear()
        self._release_confirmations()

    def subscribe(self, stream: str) -> None:
        if self._closed or stream in self._streams:
            return
        self._streams.add(stream)
        if self._session is not None:  # otherwise the next session subscribes the whole set
            self._confirmations[self._channel(stream)] = asyncio.get_running_loop().create_future()
            self._push((_SUB, self._channel(stream), b""))

    def confirmed(self, stream: str) -> asyncio.Future[None] | None:
        """Pending until Redis confirms the SUBSCRIBE: a node that replies to a join before
        that could miss what another node publishes right after the client saw the reply."""
        if self._state != "connected":
            return None  # degraded: only local delivery, nothing to wait for
        fut = self._confirmations.get(self._channel(stream))
        return fut if fut is not None and not fut.done() else None

    def _release_confirmations(self) -> None:
        for fut in self._confirmations.values():
            if not fut.done():
                fut.set_result(None)
        self._confirmations.clear()

    def unsubscribe(self, stream: str) -> None:
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        if self._session is not None:
            self._push((_UNSUB, self._channel(stream), b""))

    def publish(self, envelope: Envelope) -> None:
        if self._closed:
            return
        if self._state != "connected":
            self.dropped += 1
            self._deliver_local(envelope)
            return
        seq = self._next_seq()
        offsets = envelope.broadcast is not None and self.limits.enabled
        try:
            frame = encode_envelope(envelope, sender=self._sender, seq=seq, offset_pending=offsets)
        except (TypeError, ValueError):
            # A value that cannot cross nodes is a programming error elsewhere; the local
            # subscribers still get the message rather than the caller getting an exception.
            log.exception("redis pubsub %s: envelope for %r cannot be serialized; delivered locally only",
                          self.node_id, envelope.stream)
            self._flush_unechoed()
            self._deliver_local(envelope)
            return
        if envelope.stream in self._streams:
            self._unechoed.append((seq, envelope))
            if len(self._unechoed) > UNECHOED_MAX:
                self._unechoed.popleft()  # never echoed (unsubscribed meanwhile): forget it
        if offsets:
            self._push((_EVAL, envelope.stream, frame))
        else:
            self._push((_PUB, self._channel(envelope.stream), frame))
        if len(self._ops) > OUTBOX_MAX and self._session is not None:
            self._session.abort(f"outbox over {OUTBOX_MAX} envelopes: Redis is not keeping up")
            self._enter_degraded(f"outbox over {OUTBOX_MAX} envelopes")

    # --- commands (see the class doc) -------------------------------------------------------

    def _channel(self, stream: str) -> str:
        return self.prefix + stream

    def _keys(self, stream: str) -> tuple[str, str]:
        """The stream's retention keys (redis_log.py)."""
        return redis_log.keys(self.prefix, stream)

    def _publish_to(self, target: Any, channel: str, frame: bytes) -> Any:
        """PUBLISH on ``target``, a connection (returns an awaitable) or a pipeline."""
        return target.publish(channel, frame)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _send_channels(self, s: Session, kind: int, names: list[str]) -> None:
        if kind == _SUB:
            await s.ps.subscribe(*names)
        else:
            await s.ps.unsubscribe(*names)

    def _is_reply(self, s: Session, kind: str, channel: str) -> bool:
        """Whether an (un)subscribe message answers a command of ours; ``False`` for one the
        server sent on its own (sharded pub/sub: the channel's slot moved)."""
        return True

    # --- local delivery -------------------------------------------------------------------

    def _push(self, op: _Op) -> None:
        self._ops.append(op)
        self._ops_ready.set()

    def _deliver_local(self, env: Envelope) -> None:
        deliver = self._deliver
        if deliver is None or env.stream not in self._streams:
            return
        b = env.broadcast
        if b is not None and env.offset is None and self.limits.enabled:  # degraded: local offsets
            offset, epoch = self._local.append(env.stream, b, asyncio.get_running_loop().time())
            env = dataclasses.replace(env, offset=offset, epoch=epoch)
        try:
            deliver(env)
        except Exception:  # a subscriber's bug must not stop the backbone
            log.exception("redis pubsub %s: deliver failed for stream %r", self.node_id, env.stream)

    def _flush_unechoed(self) -> None:
        """Deliver locally, in publish order, own envelopes Redis has not echoed yet."""
        pending, self._unechoed = self._unechoed, deque()
        for _seq, env in pending:
            self._deliver_local(env)

    def _on_frame(self, data: bytes) -> None:
        try:
            sender, seq = read_header(data)
            env = self._take_echo(seq) if sender == self._sender else None
            if env is None:
                if sender == self._sender and not self.DELIVER_UNKNOWN_ECHO:
                    return
                env = decode_envelope(data)
            elif (position := read_offset(data)) is not None:
                env = dataclasses.replace(env, offset=position[0], epoch=position[1])
        except WireError as exc:
            log.warning("redis pubsub %s: ignoring malformed message (%s)", self.node_id, exc)
            return
        self._deliver_local(env)

    def _take_echo(self, seq: int) -> Envelope | None:
        pending = self._unechoed
        # Older entries were not echoed: Redis had no subscription for them when published.
        while pending and pending[0][0] < seq:
            pending.popleft()
        if pending and pending[0][0] == seq:
            return pending.popleft()[1]
        return None

    # --- state ----------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state == self._state:
            return
        self._state = state
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("redis pubsub %s: on_state callback failed", self.node_id)

    def _enter_degraded(self, reason: str) -> None:
        """Stop routing through Redis; local subscribers get pending and new messages now."""
        self._release_confirmations()  # nobody waits on a broker that is gone
        if self._state == "degraded":
            if not self._announced:
                self._announced = True
                log.warning("redis pubsub %s: cannot reach %s (%s); local delivery only, retrying",
                            self.node_id, redact(self.url), reason)
            return
        # The local copies of queued envelopes are in _unechoed; the remote copies are dropped.
        self.dropped += sum(1 for op in self._ops if op[0] == _PUB)
        self._ops.clear()
        self._set_state("degraded")
        log.warning("redis pubsub %s: DEGRADED, lost %s (%s); local delivery only, reconnecting",
                    self.node_id, redact(self.url), reason)
        self._flush_unechoed()

    def _enter_connected(self, resubscribed: int) -> None:
        self._announced = True
        self._went_live = True
        self._set_state("connected")
        if self.dropped:
            log.info("redis pubsub %s: CONNECTED to %s, %d stream(s) subscribed; %d envelope(s) "
                     "published while disconnected were delivered locally only",
                     self.node_id, redact(self.url), resubscribed, self.dropped)
        else:
            log.info("redis pubsub %s: CONNECTED to %s, %d stream(s) subscribed",
                     self.node_id, redact(self.url), resubscribed)
        self.dropped = 0
        self._settled.set()

    # --- connection loop ------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = BACKOFF_MIN_S
        while not self._closed:
            self._went_live = False
            try:
                reason = await self._run_session()
            except (RedisError, OSError, WireError, SessionLost) as exc:
                reason = describe(exc)
            except Exception as exc:  # a client-library surprise must not end reconnection
                log.exception("redis pubsub %s: unexpected error in the Redis session", self.node_id)
                reason = describe(exc)
            if self._went_live:
                delay = BACKOFF_MIN_S  # it worked until now: retry promptly
            self._enter_degraded(reason)
            self._settled.set()
            log.debug("redis pubsub %s: next attempt in %.1fs", self.node_id, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _run_session(self) -> str:
        """One connection attempt; returns (or raises) the reason it ended."""
        pub, sub = client(self.url, self.node_id, "pub"), client(self.url, self.node_id, "sub")
        ps = sub.pubsub()
        tasks: list[asyncio.Task[None]] = []
        try:
            await pub.ping()
            if self.limits.enabled:
                self._publish_sha = await pub.script_load(self.PUBLISH_LUA)
            await ps.ping()  # opens the subscribe connection; the reader consumes the PONG
            session = Session(pub, sub, ps, asyncio.get_running_loop().time())
            # Re-subscribe the whole set, then go live once Redis confirmed it (_READY).
            # No await between the snapshot and setting _session: later (un)subscribes queue.
            self._ops.clear()
            channels = sorted(self._channel(s) for s in self._streams)
            for channel in channels:
                self._ops.append((_SUB, channel, b""))
            self._ops.append((_READY, str(len(channels)), b""))
            self._ops_ready.set()
            self._session = session
            tasks = [
                asyncio.create_task(self._read_loop(session)),
                asyncio.create_task(self._write_loop(session)),
                asyncio.create_task(heartbeat(session)),
            ]
            watched: list[asyncio.Future[Any]] = [*tasks, session.lost]
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if session.lost.done():
                return session.lost.result()
            for task in done:
                task.result()  # raises what ended the session
            return "connection closed"
        finally:
            self._session = None
            try:
                await stop_tasks(tasks)  # a CancelledError from close() still propagates
            finally:
                for closer in (ps.aclose, pub.aclose, sub.aclose):
                    with contextlib.suppress(Exception):
                        await closer()

    async def _read_loop(self, s: Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            msg: dict[str, Any] | None = await s.ps.get_message(timeout=None)
            s.last_rx = loop.time()
            if msg is None:
                continue
            kind = msg["type"]
            if kind == self.MESSAGE:
                self._on_frame(msg["data"])
            elif kind in (self.SUBSCRIBED, self.UNSUBSCRIBED):
                channel = msg.get("channel")
                name = channel.decode() if isinstance(channel, bytes) else str(channel)
                if not self._is_reply(s, kind, name):
                    continue
                if kind == self.SUBSCRIBED:
                    fut = self._confirmations.pop(name, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                s.unconfirmed -= 1
                if s.unconfirmed <= 0:
                    s.unconfirmed = 0
                    s.all_confirmed.set()

    async def _write_loop(self, s: Session) -> None:
        ops = self._ops
        while True:
            if not ops:
                self._ops_ready.clear()
                await self._ops_ready.wait()
                continue
            kind = ops[0][0]
            if kind in (_SUB, _UNSUB):
                await self._send_subscriptions(s, kind)
                continue
            if s.unconfirmed:  # see module doc: publish only behind confirmed subscriptions
                await s.all_confirmed.wait()
                continue
            if kind == _READY:
                self._enter_connected(int(ops.popleft()[1]))
                continue
            batch: list[_Op] = []
            while ops and ops[0][0] in (_PUB, _EVAL) and len(batch) < PIPELINE_MAX:
                batch.append(ops.popleft())
            await self._send_batch(s, batch)

    async def _send_batch(self, s: Session, batch: list[_Op]) -> None:
        """Send publish operations in one round trip; raises what Redis answers."""
        if len(batch) == 1 and batch[0][0] == _PUB:
            await self._publish_to(s.pub, batch[0][1], batch[0][2])
            return
        pipe = s.pub.pipeline(transaction=False)
        for op in batch:
            self._queue_op(pipe, op)
        await pipe.execute()

    def _queue_op(self, pipe: Any, op: _Op) -> None:
        kind, name, frame = op
        if kind == _PUB:
            self._publish_to(pipe, name, frame)
        else:
            args = redis_log.publish_args(self.limits, self._channel(name), frame, new_epoch())
            pipe.evalsha(self._publish_sha, 2, *self._keys(name), *args)

    async def _send_subscriptions(self, s: Session, kind: int) -> None:
        ops = self._ops
        names: dict[str, None] = {}  # one reply per distinct channel
        while ops and ops[0][0] == kind and len(names) < SUBSCRIBE_BATCH_MAX:
            names[ops.popleft()[1]] = None
        s.unconfirmed += len(names)
        s.all_confirmed.clear()
        await self._send_channels(s, kind, list(names))

    # --- retention (module doc "Offsets") -----------------------------------------------------

    async def history(self, stream: str, epoch: str, after: int) -> tuple[History[Broadcast], Gap | None]:
        session = self._session
        local = self._local.history(stream, after, epoch, asyncio.get_running_loop().time())
        if session is None or self._state != "connected" or not self.limits.enabled:
            return local
        try:
            return await redis_log.read_history(session.pub, self._keys(stream), self.limits, epoch, after)
        except (RedisError, OSError, WireError, ValueError) as exc:
            log.warning("redis pubsub %s: cannot read the retention log of %r (%s)", self.node_id, stream, describe(exc))
            return local
