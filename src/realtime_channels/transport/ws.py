"""One WebSocket: the upgrade, one reader, the writer, timers and every close.

Frames leave through ``Connection.write``: pre-built RFC 6455 frames written straight to the
socket's transport, with no await and no per-subscriber encoding (design.md §3).  The
transport's buffer is the connection's outbox, bounded by ``outbox_max_bytes``: a consumer that
falls further behind is closed with code 1008 ("slow consumer") and dropped — it never blocks
fan-out and never grows memory without bound.  One frame larger than the cap (a big
``presence_state``) is let in when no more than the cap is queued before it.  Every close (idle, join-rate offender, slow
consumer, drain) goes through ``Connection.close``.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from .. import errors, logs, metrics, tracing
from ..node import Node
from ..protocol import handshake
from ..protocol import session as s
from ..protocol.codec import BinaryBroadcastPush, DecodeError, Message, Vsn, decode_binary, decode_text, encode_utf8
from ..protocol.wsframe import build_text_frame
from . import effects, timeuuid
from .state import STATE, AppState, json_response, state_for_host

log = logging.getLogger("realtime_channels.transport")

#: A socket's reader yields to the others after this much uninterrupted work.
READ_SLICE_S = 0.001
#: After the slow-consumer close is queued, give the peer this long before aborting.
SLOW_CONSUMER_GRACE_S = 1.0

_conn_ids = itertools.count(1)


def close_frame_of(err: type[errors.RealtimeError]) -> tuple[int, str]:
    """The close code and reason an error class is sent with."""
    assert err.close_code is not None and err.close_reason is not None, err
    return err.close_code, err.close_reason


def close_reason(ws: web.WebSocketResponse) -> str | None:
    extra = ws.close_reason if hasattr(ws, "close_reason") else None
    return str(extra) if extra else None


class Connection(abc.ABC):
    """One WebSocket: owns its Session, hands its effects to ``effects.run``, writes frames."""

    __slots__ = ("address", "allowance", "backlog", "claims", "close_due", "close_task", "closing", "conn_id",
                 "headers", "joined", "joins", "last_rx", "loop", "session", "state", "timer", "timer_at",
                 "transport", "vsn")

    def __init__(self, state: AppState, transport: asyncio.BaseTransport, vsn: Vsn, session: s.Session,
                 headers: dict[str, str] | None = None, address: str | None = None) -> None:
        self.state = state
        #: the upgrade request's ``x-*`` headers, exposed to policies as request.headers (§1.3)
        self.headers = headers or {}
        #: the API key's claims, and the topics joined (for function events)
        self.claims: dict[str, Any] = {}
        self.joined: set[str] = set()
        #: the client address counted against ``max_connections_per_address`` (``Admitted``)
        self.address = address
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.vsn = vsn
        self.session = session
        self.conn_id = next(_conn_ids)
        self.loop = asyncio.get_running_loop()
        self.last_rx = self.loop.time()
        self.closing = False
        self.close_task: asyncio.Future[Any] | None = None
        #: set when a Close effect condemned the socket; resolved when the close is sent
        self.close_due: asyncio.Future[None] | None = None
        #: effect batches waiting behind one that waits for the backbone (``effects.run``)
        self.backlog: list[list[s.Effect]] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")
        #: how far the outbox may exceed the cap: the size of the last frame let in over it
        self.allowance = 0
        #: ``phx_join`` ref → when it arrived, until its reply is written (/metrics join latency)
        self.joins: dict[str | None, float] = {}

    @property
    def node(self) -> Node:
        return self.state.node

    # output ----------------------------------------------------------------------------------

    def write(self, frame: bytes) -> None:
        """Hot path: queue one pre-built frame; drop the connection if its outbox overflows."""
        if self.closing:
            return
        transport = self.transport
        if transport.is_closing():
            self.closing = True
            return
        transport.write(frame)
        cap = self.state.settings.outbox_max_bytes
        unsent = transport.get_write_buffer_size()
        if unsent > cap + self.allowance:
            if unsent - len(frame) <= cap:
                # one frame larger than the cap (a big presence_state) queued behind no more
                # than the cap: a reader that keeps up gets it; the outbox stays bounded by
                # the cap plus this frame
                self.allowance = len(frame)
                return
            metrics.SLOW_CONSUMERS.inc()
            log.warning("closing slow consumer conn=%s (outbox over %d bytes)",
                        self.conn_id, self.state.settings.outbox_max_bytes)
            self.close(*close_frame_of(errors.SlowConsumer), abort_after=SLOW_CONSUMER_GRACE_S)

    def send(self, msg: Message) -> None:
        self.write(build_text_frame(encode_utf8(self.vsn, msg)))

    def close(self, code: int, reason: str, abort_after: float | None = None) -> asyncio.Future[Any] | None:
        """The one way a socket is closed: nothing more is written after the close frame;
        ``abort_after`` seconds later the TCP connection is cut if the peer has not answered."""
        if not self.closing:
            self.closing = True
            self.close_task = self.send_close(code, reason)
            if abort_after is not None:
                self.loop.call_later(abort_after, self.transport.abort)
        return self.close_task

    @abc.abstractmethod
    def send_close(self, code: int, reason: str) -> asyncio.Future[Any]:
        """Write the close frame; the future is done when the closing handshake is over."""

    def close_later(self, code: int, reason: str, delay: float) -> None:
        """Condemned (a ``Close`` effect): nothing more is read from this socket, and it is
        closed after ``delay`` (a join-rate offender would otherwise pile up refusals)."""
        if self.close_due is None:
            self.close_due = self.loop.create_future()
            self.loop.call_later(delay, self._close_due, code, reason)

    def _close_due(self, code: int, reason: str) -> None:
        self.close(code, reason)
        if self.close_due is not None and not self.close_due.done():
            self.close_due.set_result(None)

    # effects and functions -------------------------------------------------------------------

    def run(self, batch: list[s.Effect]) -> None:
        effects.run(self, batch)

    def observe(self, kind: str, topic: str, event: str | None, payload: Any) -> None:
        effects.observe(self, kind, topic, event, payload)

    # input -----------------------------------------------------------------------------------

    def decode(self, data: str | bytes) -> tuple[Message | BinaryBroadcastPush, int] | None:
        try:
            if isinstance(data, str):
                return decode_text(self.vsn, data), len(data)
            push = decode_binary(self.vsn, data)
            return push, len(push.data)
        except errors.PayloadTooDeep as exc:
            if exc.topic is not None and exc.ref is not None:
                self.send(Message(exc.topic, "phx_reply", {"status": "error", "response": {"reason": exc.message}},
                                  exc.ref, exc.join_ref))
            return None
        except DecodeError as exc:
            log.debug("ignoring undecodable frame conn=%s: %s", self.conn_id, exc)  # §2.4
            return None

    def open(self, claims: dict[str, Any]) -> None:
        """The socket is upgraded: it counts as open from now on and its idle timer runs."""
        self.claims = claims
        self.state.connections.add(self)
        self.observe("connection.open", "", None, None)
        self.arm_timer()

    def handle(self, msg: Message | BinaryBroadcastPush, size: int) -> None:
        metrics.join_received(self, msg)
        topic = logs.TOPIC.set(msg.topic)  # the log context of what the frame causes
        try:
            if tracing.ENABLED and isinstance(msg, Message) and msg.event == "phx_join":
                with tracing.join(self.conn_id, msg.topic, msg.ref, msg.payload):
                    self.run(self.session.receive(msg, time.time(), size))
            else:
                self.run(self.session.receive(msg, time.time(), size))
        finally:
            logs.TOPIC.reset(topic)

    # timers: idle timeout (§2.2) and channel token expiry (§3.9) share one handle ------------

    def arm_timer(self) -> None:
        idle_at = self.last_rx + self.state.settings.idle_timeout_ms / 1000
        at = idle_at
        deadline = self.session.next_deadline()
        if deadline is not None:
            at = min(at, self.loop.time() + max(0.0, deadline - time.time()))
        if self.timer is not None:
            if at >= self.timer_at:
                return  # the armed timer fires first and re-arms itself
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.timer_at = float("inf")
        if self.closing:
            return
        if self.loop.time() - self.last_rx >= self.state.settings.idle_timeout_ms / 1000:
            log.info("closing idle connection conn=%s", self.conn_id)
            self.close(*close_frame_of(errors.IdleTimeout))
            return
        self.run(self.session.tick(time.time()))
        self.arm_timer()

    def finish(self, code: int | None, reason: str | None) -> None:
        """The socket is gone (``code`` and ``reason``: its close frame's, if one was exchanged)."""
        self.closing = True
        self.state.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.run(self.session.closed())
        release_address(self.state, self.address)
        if tracing.ENABLED:
            tracing.connection_closed(self.conn_id)
        self.observe("connection.close", "", None, {"code": code, "reason": reason})


class AiohttpConnection(Connection):
    """A socket upgraded by aiohttp: its ``WebSocketResponse`` reads and closes."""

    __slots__ = ("ws",)

    def __init__(self, state: AppState, ws: web.WebSocketResponse, transport: asyncio.BaseTransport,
                 vsn: Vsn, session: s.Session, headers: dict[str, str] | None = None,
                 address: str | None = None) -> None:
        super().__init__(state, transport, vsn, session, headers, address)
        self.ws = ws

    def send_close(self, code: int, reason: str) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.ws.close(code=code, message=reason.encode()))


@dataclass(frozen=True, slots=True)
class Admitted:
    """An upgrade that passed every check: the tenant's state, the request's wire format and API
    key, the key's claims, and the address counted against the per-address cap (if one is set)."""

    state: AppState
    checked: handshake.Upgrade
    claims: dict[str, Any]
    address: str | None


async def admit(app: web.Application, method: str, headers: Mapping[str, str], query: Mapping[str, str],
                remote: str | None) -> tuple[AppState, Admitted | handshake.Refusal]:
    """Every check of an upgrade request (§1.2–§1.4), in order: its tenant, ``vsn`` and API key,
    the key's signature, the tenant's limits, the per-address cap.  An ``Admitted`` counts its
    address until ``release_address``."""
    try:
        state = await state_for_host(app, headers.get("Host"))
    except (errors.TenantNotFound, errors.TenantSuspended) as err:
        return app[STATE], handshake.refusal(err)
    checked = handshake.check_request(method, query.get("vsn"), headers, query)
    if isinstance(checked, handshake.Refusal):
        return state, checked
    try:
        claims = await state.verify(checked.api_key)
    except errors.RealtimeError as err:
        return state, handshake.refusal(err)
    return state, admit_claims(state, checked, claims, headers, remote)


def admit_now(state: AppState, method: str, headers: Mapping[str, str], query: Mapping[str, str],
              remote: str | None) -> Admitted | handshake.Refusal | None:
    """``admit`` without waiting, for a tenant already known: ``None`` when the API key names a
    key the JWKS must be fetched again for (then ``admit`` it)."""
    checked = handshake.check_request(method, query.get("vsn"), headers, query)
    if isinstance(checked, handshake.Refusal):
        return checked
    if state.claims.needs_refresh(checked.api_key):
        return None
    try:
        claims = state.claims.verify_cached(checked.api_key, time.time())
    except errors.RealtimeError as err:
        return handshake.refusal(err)
    return admit_claims(state, checked, claims, headers, remote)


def admit_claims(state: AppState, checked: handshake.Upgrade, claims: dict[str, Any], headers: Mapping[str, str],
                 remote: str | None) -> Admitted | handshake.Refusal:
    """The checks after the API key's: the tenant's limits and the per-address cap."""
    over_limit = handshake.check_limits(state.node.limits, time.time())
    if over_limit is not None:
        return over_limit
    cap = state.settings.max_connections_per_address
    if not cap:
        return Admitted(state, checked, claims, None)
    address = state.client_address(remote, headers)
    if state.per_address[address] >= cap:
        return handshake.refusal(errors.AddressConnectionLimitReached())
    state.per_address[address] += 1  # counted before the next await: no race past the cap
    return Admitted(state, checked, claims, address)


def release_address(state: AppState, address: str | None) -> None:
    if address is not None:
        state.per_address[address] -= 1
        if not state.per_address[address]:
            del state.per_address[address]


def new_session(state: AppState, api_key: str) -> s.Session:
    keeper = state.node.gatekeeper
    return s.Session(verify=tracing.verifier(state.claims.verify_cached), conn_token=api_key,
                     new_presence_key=timeuuid.new_key, config=state.session_config,
                     limits=state.node.limits, gates=keeper.has_gate if keeper is not None else None)


def x_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upgrade request's ``x-*`` headers, lower-cased: policies see them as request.headers."""
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-")}


async def pace(state: AppState, remote: str | None, refusal: handshake.Refusal) -> None:
    """§1.4: refusals are logged, and paced to slow reconnect storms."""
    log.info("refused WebSocket upgrade from %s: %s", remote, refusal.reason)
    metrics.refused(refusal.reason.partition(":")[0])
    if refusal.paced:
        await asyncio.sleep(state.settings.connect_error_backoff_ms / 1000)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    with logs.bind(request_id=logs.request_id(request.headers.get("X-Request-Id"))):
        state, admitted = await admit(request.app, request.method, request.headers, request.query, request.remote)
        if isinstance(admitted, handshake.Refusal):
            await pace(state, request.remote, admitted)
            if admitted.body is None:
                return web.Response(status=admitted.status, body=b"")
            return json_response(admitted.status, dict(admitted.body))
        return await serve_socket(admitted, request)


async def serve_socket(admitted: Admitted, request: web.Request) -> web.StreamResponse:
    """Upgrade the request with aiohttp and run the socket until it closes."""
    state = admitted.state
    ws = web.WebSocketResponse(compress=False, max_msg_size=state.settings.max_frame_bytes,
                               autoping=True, autoclose=True)
    try:
        await ws.prepare(request)
    except BaseException:
        release_address(state, admitted.address)
        raise
    transport = request.transport
    if transport is None:  # the peer vanished during the upgrade
        release_address(state, admitted.address)
        return ws
    session = new_session(state, admitted.checked.api_key)
    conn = AiohttpConnection(state, ws, transport, admitted.checked.vsn, session, x_headers(request.headers),
                             admitted.address)
    with logs.bind(socket_id=logs.socket_id(conn.conn_id)):
        conn.open(admitted.claims)
        try:
            await read_loop(conn, ws)
        finally:
            conn.finish(ws.close_code, close_reason(ws))
    return ws


async def read_loop(conn: AiohttpConnection, ws: web.WebSocketResponse) -> None:
    """One socket's frames, in order.

    Fairness: while a socket has frames buffered ``ws.receive()`` returns without yielding, so
    a flooding client would hold the event loop for a whole socket read (thousands of frames)
    while every other socket waits.  The loop therefore yields after ``READ_SLICE_S`` of work,
    and a socket over its inbound budget (``REALTIME_MAX_CLIENT_FRAMES_PER_SECOND``) is simply
    not read for a while: TCP back-pressure slows the sender, nobody else is delayed, and no
    frame is dropped."""
    loop = conn.loop
    budget = conn.state.frame_budget()
    slice_start = loop.time()
    while True:
        msg = await ws.receive()
        now = loop.time()
        conn.last_rx = now
        if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
            decoded = conn.decode(msg.data)
            if decoded is not None:
                conn.handle(*decoded)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
        if conn.close_due is not None:  # condemned: read nothing more until the close is sent
            await conn.close_due
        if conn.closing:
            if conn.close_task is not None:  # let our close (e.g. 1001) finish before returning
                await asyncio.shield(conn.close_task)
            return
        conn.arm_timer()
        if not budget.take(now):
            await asyncio.sleep(budget.wait(now))  # pace this socket only (see docstring)
            slice_start = loop.time()
        elif loop.time() - slice_start > READ_SLICE_S:
            await asyncio.sleep(0)  # let the other sockets have their turn
            slice_start = loop.time()
