"""The session's effects, executed for one socket: one small handler per effect type.

Effects run in order, synchronously (the post-join ordering of protocol.md §3.7 depends on it).
Effects that need I/O — policy checks, the replication-ready wait — start a task whose answer
goes back to the session, and the session's answer runs here in turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from .. import errors, metrics, tracing
from ..functions.events import RealtimeEvent
from ..node import Gatekeeper, Node
from ..protocol import session as s
from ..protocol.codec import Message, Vsn, encode_kind4
from ..protocol.keys import TOPIC_PREFIX
from ..protocol.wsframe import build_frame

log = logging.getLogger("realtime_channels.transport")

#: A join waits at most this long for the backbone to confirm a new stream subscription.
SUBSCRIBE_CONFIRM_TIMEOUT_S = 5.0
#: §3.7: a channel asking for replication_ready is shut down when it is not ready by then.
REPLICATION_READY_TIMEOUT_S = 60.0


class Conn(Protocol):
    """What the handlers need of a socket (``transport.ws.Connection``)."""

    conn_id: int
    loop: asyncio.AbstractEventLoop
    session: s.Session
    vsn: Vsn
    closing: bool
    claims: dict[str, Any]
    joined: set[str]
    headers: dict[str, str]
    backlog: list[list[s.Effect]] | None
    joins: dict[str | None, float]

    @property
    def node(self) -> Node: ...

    def send(self, msg: Message) -> None: ...

    def write(self, frame: bytes) -> None: ...

    def close_later(self, code: int, reason: str, delay: float) -> None: ...


E = TypeVar("E")
Handler = Callable[[Conn, Any], None]
HANDLERS: dict[type, Handler] = {}


def handles(kind: type[E]) -> Callable[[Callable[[Conn, E], None]], Callable[[Conn, E], None]]:
    def register(fn: Callable[[Conn, E], None]) -> Callable[[Conn, E], None]:
        HANDLERS[kind] = fn
        return fn

    return register


def run(conn: Conn, effects: list[s.Effect]) -> None:
    """Execute a batch of effects in order.  A batch that subscribes to a stream new to this
    node waits until the backbone confirms it (so nothing another node publishes after the
    client saw its join reply is missed); later batches queue behind it."""
    if conn.backlog is not None:
        conn.backlog.append(effects)
        return
    node = conn.node
    waits = [w for e in effects if isinstance(e, s.Subscribe)
             and (w := node.prepare_stream(e.stream)) is not None]
    if waits:
        conn.backlog = [effects]
        conn.loop.create_task(_run_when_confirmed(conn, waits))
        return
    execute(conn, effects)


async def _run_when_confirmed(conn: Conn, waits: list[Awaitable[None]]) -> None:
    try:
        async with asyncio.timeout(SUBSCRIBE_CONFIRM_TIMEOUT_S):
            await asyncio.gather(*waits)
    except TimeoutError:
        log.warning("backbone did not confirm a subscription in time conn=%s", conn.conn_id)
    (first, *rest), conn.backlog = conn.backlog or [[]], None
    execute(conn, first)
    for i, effects in enumerate(rest):
        if conn.backlog is not None:  # a queued batch started another wait: keep the rest
            conn.backlog.extend(rest[i:])
            return
        run(conn, effects)


def execute(conn: Conn, effects: list[s.Effect]) -> None:
    for e in effects:
        HANDLERS[type(e)](conn, e)


def observe(conn: Conn, kind: str, topic: str, event: str | None, payload: Any) -> None:
    """A function event (README "Functions"), reported where it originates."""
    sink = conn.node.functions
    if sink is None:
        return
    sink.observe(RealtimeEvent(kind, sub_topic(topic), event, payload, claims_of(conn, topic)))


def sub_topic(topic: str) -> str:
    return topic[len(TOPIC_PREFIX):] if topic.startswith(TOPIC_PREFIX) else topic


def claims_of(conn: Conn, topic: str) -> Mapping[str, Any]:
    ch = conn.session.channels.get(topic)
    return ch.claims if ch is not None else conn.claims


# --- the handlers ---------------------------------------------------------------------------


@handles(s.Send)
def _send(conn: Conn, e: s.Send) -> None:
    metrics.replied(conn, e.message)
    trace = conn.node.trace
    if trace.active and trace.watching(sub_topic(e.message.topic)):
        _trace_refusal(conn, e.message)
    if e.delay > 0:
        conn.loop.call_later(e.delay, conn.send, e.message)
    else:
        conn.send(e.message)
    if tracing.ENABLED:  # the reply to a join ends its span
        m = e.message
        tracing.replied(conn.conn_id, m.topic, m.event, m.ref, m.payload, e.delay)


def _trace_refusal(conn: Conn, msg: Message) -> None:
    """For ``GET /api/trace``: a push this socket made on the topic was refused (a rate limit
    or another limit shut the channel down, or it was not joined)."""
    payload = msg.payload if isinstance(msg.payload, dict) else {}
    why: str | None = None
    if msg.event == "system" and payload.get("status") == "error" and payload.get("extension") != "postgres_changes":
        why = str(payload.get("message"))
    elif msg.event == "phx_reply" and payload.get("response") == {"reason": errors.UnmatchedTopic.message}:
        why = "not joined (unmatched topic)"
    if why is not None:
        conn.node.trace.emit(sub_topic(msg.topic), {"kind": "refused", "socket": conn.conn_id, "why": why})


@handles(s.SendBinary)
def _send_binary(conn: Conn, e: s.SendBinary) -> None:
    """Kind-4 frames go to V2 sockets only: a V1 socket cannot carry bytes (§4.8)."""
    if conn.vsn is Vsn.V2:
        frame = encode_kind4(e.topic, e.event, dict(e.meta), e.data, True)
        if frame is not None:
            conn.write(build_frame(frame))


@handles(s.Publish)
def _publish(conn: Conn, e: s.Publish) -> None:
    exclude = None if e.exclude is None else (conn.conn_id, e.exclude)
    conn.node.publish(e.stream, e.broadcast, exclude, claims=claims_of(conn, e.broadcast.topic))


@handles(s.Subscribe)
def _subscribe(conn: Conn, e: s.Subscribe) -> None:
    conn.node.subscribe(e.stream, (conn.conn_id, e.topic), conn, e.skip_ids, e.offsets, e.hold)
    if e.topic not in conn.joined:
        conn.joined.add(e.topic)
        observe(conn, "channel.join", e.topic, None, None)


@handles(s.ResumeBroadcasts)
def _resume_broadcasts(conn: Conn, e: s.ResumeBroadcasts) -> None:
    """§4.10: the channel is subscribed (held) and the backbone confirmed the stream, so the
    history read now overlaps the live stream; the hub dedupes the overlap by offset."""
    async def answer() -> None:
        history, gap = await conn.node.broadcast_history(e.stream, e.epoch, e.offset)
        result = s.ResumeAnswer(history.epoch, history.entries, gap is not None,
                                gap.missed if gap is not None else None, gap.next if gap is not None else 0)
        if not conn.closing:
            run(conn, conn.session.resumed(e.topic, e.join_ref, result))

    conn.loop.create_task(answer())


@handles(s.ReleaseResume)
def _release_resume(conn: Conn, e: s.ReleaseResume) -> None:
    conn.node.release_resume(e.stream, (conn.conn_id, e.topic), e.epoch, e.entries, e.covered)


@handles(s.Unsubscribe)
def _unsubscribe(conn: Conn, e: s.Unsubscribe) -> None:
    conn.node.unsubscribe(e.stream, (conn.conn_id, e.topic))
    if e.topic in conn.joined:
        conn.joined.discard(e.topic)
        observe(conn, "channel.leave", e.topic, None, None)


@handles(s.Track)
def _track(conn: Conn, e: s.Track) -> None:
    if not conn.node.track(e.stream, (conn.conn_id, e.topic), e.key, e.payload):
        if e.refused is not None:
            conn.send(e.refused)
        return
    if conn.node.functions is not None:
        observe(conn, "presence.join", e.topic, e.key, dict(e.payload))
    if e.accepted is not None:
        conn.send(e.accepted)


@handles(s.Untrack)
def _untrack(conn: Conn, e: s.Untrack) -> None:
    conn.node.untrack(e.stream, (conn.conn_id, e.topic))
    observe(conn, "presence.leave", e.topic, None, None)


@handles(s.PushPresenceState)
def _presence_state(conn: Conn, e: s.PushPresenceState) -> None:
    state = conn.node.presence_state_json(e.stream)
    conn.send(Message(e.topic, "presence_state", state, ref=None, join_ref=e.join_ref))


@handles(s.Close)
def _close(conn: Conn, e: s.Close) -> None:
    conn.close_later(e.code, e.reason, e.delay)


@handles(s.SubscribePostgres)
def _subscribe_postgres(conn: Conn, e: s.SubscribePostgres) -> None:
    conn.node.subscribe_postgres(conn.conn_id, conn, e.topic, e.join_ref, e.bindings, e.claims,
                                 offsets=e.offsets, resume_from=e.resume_from, snapshot=e.snapshot)


@handles(s.AwaitPostgres)
def _await_postgres(conn: Conn, e: s.AwaitPostgres) -> None:
    """§3.11: the session is answered once — live, refused for good, or timed out.  The live
    answer runs inside the feed's registration, so the join reply is written before any change
    routed to the new subscriptions."""
    settled = False

    def answer(error: errors.RealtimeError | None) -> None:
        nonlocal settled
        if settled:
            return
        settled = True
        timer.cancel()
        if not conn.closing:
            run(conn, conn.session.postgres_ready(e.topic, e.join_ref, error, time.time()))

    def ready(failure: errors.SubscribeError | None) -> None:
        answer(None if failure is None else errors.RealtimeDisabledForConfiguration(failure.message))

    timer = conn.loop.call_later(e.timeout_ms / 1000, answer, errors.PostgresChangesSubscribeTimeout(e.timeout_ms))
    conn.node.subscribe_postgres(conn.conn_id, conn, e.topic, e.join_ref, e.bindings, e.claims, ready,
                                 offsets=e.offsets, resume_from=e.resume_from)


@handles(s.UnsubscribePostgres)
def _unsubscribe_postgres(conn: Conn, e: s.UnsubscribePostgres) -> None:
    conn.node.unsubscribe_postgres(conn.conn_id, e.topic)


@handles(s.Authorize)
def _authorize(conn: Conn, e: s.Authorize) -> None:
    async def answer() -> None:
        with tracing.span("realtime.authorize", topic=e.topic, purpose=e.purpose, checks=",".join(e.checks)) as sp:
            result = await conn.node.authorize(e, conn.headers)
            sp.set_attribute("granted", ",".join(sorted(k for k, v in result.granted.items() if v)))
            if result.error is not None:
                sp.set_attribute("error", result.error)
        if not conn.closing:
            run(conn, conn.session.authorized(e.topic, e.join_ref, e.purpose, result, time.time()))

    conn.loop.create_task(answer())


@handles(s.Persist)
def _persist(conn: Conn, e: s.Persist) -> None:
    """§4.9: store, then broadcast (with ``meta.id`` = the row's id) — even when the channel
    left meanwhile, since the message is stored — then answer the session (ack or error)."""
    async def answer() -> None:
        result = await conn.node.persist(e.sub_topic, e.claims, conn.headers, e.event, e.data, e.binary, e.ttl)
        if result.id is not None:
            b = dataclasses.replace(e.publish.broadcast, meta={"id": result.id})
            _publish(conn, dataclasses.replace(e.publish, broadcast=b))
        if not conn.closing:
            run(conn, conn.session.persisted(e.topic, e.join_ref, result, time.time()))

    conn.loop.create_task(answer())


@handles(s.AwaitReplication)
def _await_replication(conn: Conn, e: s.AwaitReplication) -> None:
    """§3.7 ``replication_ready``: woken when the database replication stream is up."""
    async def answer() -> None:
        try:
            async with asyncio.timeout(REPLICATION_READY_TIMEOUT_S):
                await conn.node.replication_streaming()
            ready = True
        except TimeoutError:
            ready = False
        if not conn.closing:
            run(conn, conn.session.replication(e.topic, e.join_ref, ready))

    conn.loop.create_task(answer())


@handles(s.GateJoin)
def _gate_join(conn: Conn, e: s.GateJoin) -> None:
    async def ask(keeper: Gatekeeper) -> s.GateVerdict:
        res = await keeper.gate_join(e.sub_topic, e.claims, e.config)
        return s.GateVerdict(res.allow, res.reason)

    _gate(conn, e.topic, e.join_ref, s.GATE_JOIN, ask)


@handles(s.GateSend)
def _gate_send(conn: Conn, e: s.GateSend) -> None:
    async def ask(keeper: Gatekeeper) -> s.GateVerdict:
        res = await keeper.gate_send(e.sub_topic, e.event, e.payload, e.claims)
        return s.GateVerdict(res.allow, res.reason, res.payload)

    _gate(conn, e.topic, e.join_ref, s.GATE_SEND, ask)


def _gate(conn: Conn, topic: str, join_ref: str | None, purpose: str,
          ask: Callable[[Gatekeeper], Awaitable[s.GateVerdict]]) -> None:
    """Function gates run as a task; their verdict goes back to the session, which kept the
    channel's later pushes queued meanwhile.  A gate that fails unexpectedly denies."""
    keeper = conn.node.gatekeeper
    assert keeper is not None, "the session asks for gates only when a gatekeeper is configured"

    async def answer() -> None:
        try:
            verdict = await ask(keeper)
        except Exception:  # noqa: BLE001 - a broken gate must not leave the channel waiting
            log.exception("function gate failed conn=%s topic=%s", conn.conn_id, topic)
            verdict = s.GateVerdict(False)
        if not conn.closing:
            run(conn, conn.session.gated(topic, join_ref, purpose, verdict, time.time()))

    conn.loop.create_task(answer())
