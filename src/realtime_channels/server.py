"""The WebSocket/HTTP adapter (aiohttp): handshake, one reader per socket, timers, REST.

Frames leave through ``Connection.write``: pre-built RFC 6455 frames written straight to the
socket's transport, with no await and no per-subscriber encoding (design.md §3).  The
transport's buffer is the connection's outbox, bounded by ``outbox_max_bytes``: a consumer that
falls further behind is sent close code 1008 ("slow consumer") and dropped — it never blocks
fan-out and never grows memory without bound.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from . import errors
from .auth import JwksRefresher, JwtVerifier
from .config import Settings
from .node import Node
from .protocol import session as s
from .functions.engine import RealtimeEvent
from .protocol.codec import (
    BinaryBroadcastPush,
    Broadcast,
    DecodeError,
    Message,
    Vsn,
    decode_binary,
    decode_text,
    encode,
    encode_kind4,
    parse_vsn,
)
from .protocol.join import parse_join
from .protocol.limits import TokenBucket
from .protocol.wsframe import build_frame
from .rest import add_rest_routes

log = logging.getLogger(__name__)

WS_PATHS = ("/socket/websocket", "/realtime/v1/websocket", "/websocket")
SLOW_CONSUMER_CODE = 1008
IDLE_CLOSE_CODE = 1000
#: verified tokens remembered (signature only; expiry is always re-checked)
CLAIMS_CACHE_SIZE = 10_000
#: §3.7: a channel asking for replication_ready is shut down when it is not ready by then.
REPLICATION_READY_TIMEOUT_S = 60.0
#: A join waits at most this long for the backbone to confirm a new stream subscription.
SUBSCRIBE_CONFIRM_TIMEOUT_S = 5.0
#: A socket's reader yields to the others after this much uninterrupted work.
READ_SLICE_S = 0.001
#: After the slow-consumer close frame is queued, give the peer this long before aborting.
SLOW_CONSUMER_GRACE_S = 1.0

_conn_ids = itertools.count(1)


def broadcast_event(b: Broadcast) -> tuple[str | None, Any]:
    """(user event, payload) of a fan-out message, as a function sees it."""
    if b.event is not None:
        if b.binary:
            return b.event, b.data
        return b.event, orjson.loads(b.data)
    payload = b.payload if isinstance(b.payload, dict) else {}
    event = payload.get("event")
    return (event if isinstance(event, str) else None), payload.get("payload")


def gated_send(msg: Message | BinaryBroadcastPush) -> tuple[str | None, Any]:
    """(user event, payload) of a client broadcast push; (None, None) for any other frame."""
    if isinstance(msg, BinaryBroadcastPush):
        return msg.event, (msg.data if msg.binary else orjson.loads(msg.data))
    if msg.event != "broadcast" or not isinstance(msg.payload, dict):
        return None, None
    event = msg.payload.get("event")
    return (event if isinstance(event, str) else None), msg.payload.get("payload")


def close_reason(ws: web.WebSocketResponse) -> str | None:
    extra = ws.close_reason if hasattr(ws, "close_reason") else None
    return str(extra) if extra else None


def close_frame(code: int, reason: str) -> bytes:
    body = code.to_bytes(2, "big") + reason.encode()
    return bytes((0x88, len(body))) + body  # RFC 6455 §5.5.1; reasons here are < 126 bytes


class Connection:
    """One WebSocket: owns its Session, executes its effects, writes its frames."""

    __slots__ = (
        "app_state",
        "backlog",
        "claims",
        "close_due",
        "close_task",
        "closing",
        "conn_id",
        "headers",
        "joined",
        "last_rx",
        "loop",
        "session",
        "timer",
        "timer_at",
        "transport",
        "vsn",
        "ws",
    )

    def __init__(self, state: AppState, ws: web.WebSocketResponse, transport: asyncio.BaseTransport,
                 vsn: Vsn, session: s.Session, headers: dict[str, str] | None = None) -> None:
        self.app_state = state
        #: the upgrade request's ``x-*`` headers, exposed to policies as request.headers (§1.3)
        self.headers = headers or {}
        #: the API key's claims, and the topics joined (for function events)
        self.claims: dict[str, Any] = {}
        self.joined: set[str] = set()
        self.ws = ws
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
        #: effect batches waiting behind one that waits for the backbone (see ``run``)
        self.backlog: list[list[s.Effect]] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")

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
        if transport.get_write_buffer_size() > self.app_state.settings.outbox_max_bytes:
            self._drop_slow_consumer()

    def send(self, msg: Message) -> None:
        self.write(build_frame(encode(self.vsn, msg)))

    def _drop_slow_consumer(self) -> None:
        log.warning("closing slow consumer conn=%s (outbox over %d bytes)",
                    self.conn_id, self.app_state.settings.outbox_max_bytes)
        self.transport.write(close_frame(SLOW_CONSUMER_CODE, "slow consumer"))
        self.closing = True
        self.loop.call_later(SLOW_CONSUMER_GRACE_S, self.transport.abort)

    # effects ---------------------------------------------------------------------------------

    def run(self, effects: list[s.Effect]) -> None:
        """Execute a batch of effects in order.  A batch that subscribes to a stream new to
        this node waits until the backbone confirms it (so nothing another node publishes after
        the client saw its join reply is missed); later batches queue behind it."""
        if self.backlog is not None:
            self.backlog.append(effects)
            return
        node = self.app_state.node
        waits = [w for e in effects if isinstance(e, s.Subscribe)
                 and (w := node.prepare_stream(e.stream)) is not None]
        if waits:
            self.backlog = [effects]
            self.loop.create_task(self._run_when_confirmed(waits))
            return
        self._execute(effects)

    async def _run_when_confirmed(self, waits: list[Awaitable[None]]) -> None:
        try:
            async with asyncio.timeout(SUBSCRIBE_CONFIRM_TIMEOUT_S):
                await asyncio.gather(*waits)
        except TimeoutError:
            log.warning("backbone did not confirm a subscription in time conn=%s", self.conn_id)
        (first, *rest), self.backlog = self.backlog or [[]], None
        self._execute(first)
        for i, effects in enumerate(rest):
            if self.backlog is not None:  # a queued batch started another wait: keep the rest
                self.backlog.extend(rest[i:])
                return
            self.run(effects)

    def _execute(self, effects: list[s.Effect]) -> None:
        node = self.app_state.node
        cid = self.conn_id
        for e in effects:
            if isinstance(e, s.Send):
                if e.delay > 0:
                    self.loop.call_later(e.delay, self.send, e.message)
                else:
                    self.send(e.message)
            elif isinstance(e, s.Publish):
                node.publish(e.stream, e.broadcast, None if e.exclude is None else (cid, e.exclude))
                if node.functions is not None:
                    self.observe("broadcast", e.broadcast.topic, *broadcast_event(e.broadcast))
            elif isinstance(e, s.Subscribe):
                node.subscribe(e.stream, (cid, e.topic), self, e.skip_ids)
                if e.topic not in self.joined:
                    self.joined.add(e.topic)
                    self.observe("channel.join", e.topic, None, None)
                    ch = self.session.channels.get(e.topic)
                    if ch is not None and ch.params.replication_ready:
                        self.loop.create_task(self._replication_ready(ch.topic, ch.join_ref))
            elif isinstance(e, s.Unsubscribe):
                node.unsubscribe(e.stream, (cid, e.topic))
                if e.topic in self.joined:
                    self.joined.discard(e.topic)
                    self.observe("channel.leave", e.topic, None, None)
            elif isinstance(e, s.Track):
                node.track(e.stream, (cid, e.topic), e.key, e.payload)
                if node.functions is not None:
                    self.observe("presence.join", e.topic, e.key, dict(e.payload))
            elif isinstance(e, s.Untrack):
                node.untrack(e.stream, (cid, e.topic))
                self.observe("presence.leave", e.topic, None, None)
            elif isinstance(e, s.PushPresenceState):
                state = node.presence_state(e.stream)
                self.send(Message(e.topic, "presence_state", state, ref=None, join_ref=e.join_ref))
            elif isinstance(e, s.Authorize):
                self.loop.create_task(self._authorize(e))
            elif isinstance(e, s.SendReplayed):
                self._send_replayed(e)
            elif isinstance(e, s.Close):
                # Condemned: nothing more is read from this socket (a join-rate offender would
                # otherwise pile up thousands of delayed refusals before its close is due).
                if self.close_due is None:
                    self.close_due = self.loop.create_future()
                    self.loop.call_later(e.delay, self._close_due, e.code, e.reason)
            elif isinstance(e, s.SubscribePostgres):
                node.subscribe_postgres(cid, self, e.topic, e.join_ref, e.bindings, e.claims)
            elif isinstance(e, s.UnsubscribePostgres):
                node.unsubscribe_postgres(cid, e.topic)

    async def _replication_ready(self, topic: str, join_ref: str | None) -> None:
        """§3.7 ``replication_ready``: tell the channel once the database replication stream is
        up (checked every 500 ms); shut it down if that does not happen within 60 s."""
        changes = self.app_state.node.changes
        deadline = self.loop.time() + REPLICATION_READY_TIMEOUT_S
        while self.loop.time() < deadline:
            ch = self.session.channels.get(topic)
            if self.closing or ch is None or ch.join_ref != join_ref:
                return
            if changes is not None and changes.state == "streaming":
                notice = {"extension": "system", "status": "ok",
                          "message": "Replication connection established", "channel": ch.sub_topic}
                self.send(Message(topic, "system", notice, ref=None, join_ref=join_ref))
                return
            await asyncio.sleep(0.5)
        self.run(self.session.shutdown(topic, "Replication connection was not established in time", join_ref))

    async def _authorize(self, req: s.Authorize) -> None:
        result = await self.app_state.node.authorize(req, self.headers)
        if not self.closing:
            self.run(self.session.authorized(req.topic, req.join_ref, req.purpose, result, time.time()))

    def _send_replayed(self, e: s.SendReplayed) -> None:
        """§4.8: JSON rows as text pushes carrying the join_ref; binary rows as kind-4 frames
        to V2 sockets only (a V1 socket cannot carry bytes)."""
        for m in e.messages:
            meta = {"replayed": True, "id": m.id}
            if m.binary is not None:
                if self.vsn is Vsn.V2:
                    frame = encode_kind4(e.topic, m.event, meta, m.binary, True)
                    if frame is not None:
                        self.write(build_frame(frame))
                continue
            payload = {"type": "broadcast", "event": m.event,
                       "payload": orjson.Fragment(m.payload_json or b"{}"), "meta": meta}
            self.send(Message(e.topic, "broadcast", payload, ref=None, join_ref=e.join_ref))

    # functions (README "Functions"): events are reported where they originate -------------

    def observe(self, kind: str, topic: str, event: str | None, payload: Any) -> None:
        functions = self.app_state.node.functions
        if functions is None:
            return
        ch = self.session.channels.get(topic)
        claims = ch.claims if ch is not None else self.claims
        sub = topic[len(s.TOPIC_PREFIX):] if topic.startswith(s.TOPIC_PREFIX) else topic
        functions.observe(RealtimeEvent(kind, sub, event, payload, claims))

    async def gate(self, msg: Message | BinaryBroadcastPush) -> Message | BinaryBroadcastPush | None:
        """``authorize_join`` / ``authorize_send`` gates: deny (reply with the reason), rewrite
        the payload, or let the frame through unchanged.  Awaited in the read loop, so a
        socket's frames keep their order."""
        functions = self.app_state.node.functions
        sub = msg.topic[len(s.TOPIC_PREFIX):]
        if isinstance(msg, Message) and msg.event == "phx_join" and msg.topic.startswith(s.TOPIC_PREFIX):
            if not functions.has_gate("authorize_join", sub):
                return msg
            claims = self._join_claims(msg)
            if claims is None:
                return msg  # the session refuses the token with the protocol's own error
            config = msg.payload.get("config") if isinstance(msg.payload, dict) else None
            res = await functions.gate_join(sub, claims, config if isinstance(config, dict) else {})
            if not res.allow:
                self.send(s.reply(msg, s.error_payload({"reason": res.reason or "Unauthorized: join denied"}),
                                  msg.join_ref))
                return None
            return msg
        ch = self.session.channels.get(msg.topic)
        event, data = gated_send(msg)
        if ch is None or event is None or not functions.has_gate("authorize_send", sub, event):
            return msg
        res = await functions.gate_send(sub, event, data, ch.claims)
        if not res.allow:
            self.send(s.reply(msg, s.error_payload({"reason": res.reason or "Unauthorized: send denied"}),
                              ch.join_ref))
            return None
        if res.payload is None:
            return msg
        if isinstance(msg, BinaryBroadcastPush):
            return BinaryBroadcastPush(msg.join_ref, msg.ref, msg.topic, event, None,
                                       orjson.dumps(res.payload), False)
        payload = {**msg.payload, "payload": res.payload}
        return Message(msg.topic, msg.event, payload, ref=msg.ref, join_ref=msg.join_ref)

    def _join_claims(self, msg: Message) -> dict[str, Any] | None:
        token = parse_join(msg.payload).access_token or self.session.conn_token
        try:
            return self.session.verify(token, time.time())
        except errors.RealtimeError:
            return None

    def _close_due(self, code: int, reason: str) -> None:
        self.close(code, reason)
        if self.close_due is not None and not self.close_due.done():
            self.close_due.set_result(None)

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.close_task = asyncio.ensure_future(self.ws.close(code=code, message=reason.encode()))

    # input -----------------------------------------------------------------------------------

    def decode(self, data: str | bytes) -> tuple[Message | BinaryBroadcastPush, int] | None:
        try:
            if isinstance(data, str):
                return decode_text(self.vsn, data), len(data)
            push = decode_binary(self.vsn, data)
            return push, len(push.data)
        except DecodeError as exc:
            log.debug("ignoring undecodable frame conn=%s: %s", self.conn_id, exc)  # §2.4
            return None

    def handle(self, msg: Message | BinaryBroadcastPush, size: int) -> None:
        self.run(self.session.receive(msg, time.time(), size))

    # timers: idle timeout (§2.2) and channel token expiry (§3.9) share one handle ------------

    def arm_timer(self) -> None:
        idle_at = self.last_rx + self.app_state.settings.idle_timeout_ms / 1000
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
        if self.loop.time() - self.last_rx >= self.app_state.settings.idle_timeout_ms / 1000:
            log.info("closing idle connection conn=%s", self.conn_id)
            self.close(IDLE_CLOSE_CODE, "idle timeout")
            return
        self.run(self.session.tick(time.time()))
        self.arm_timer()

    def finish(self) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        self.run(self.session.closed())


class AppState:
    """What the handlers share: settings, the node, the verifier."""

    def __init__(self, settings: Settings, node: Node, verifier: JwtVerifier,
                 refresher: JwksRefresher | None) -> None:
        self.settings = settings
        self.node = node
        self.verifier = verifier
        self.refresher = refresher
        self.connections: set[Connection] = set()
        self._claims: dict[str, dict[str, Any]] = {}
        self.session_config = s.SessionConfig(
            max_channels=settings.max_channels_per_client,
            max_payload_bytes=settings.max_payload_bytes,
            presence_window_limit=settings.max_client_presence_events_per_window,
            presence_window_s=settings.client_presence_window_ms / 1000,
            token_recheck_s=settings.token_recheck_ms / 1000,
            join_error_delay_s=settings.join_error_backoff_ms / 1000,
            presence_forced=settings.presence_enabled,
            private_allowed=node.authorizer is not None,
            private_only=settings.private_only,
        )

    def frame_budget(self) -> TokenBucket:
        rate = float(self.settings.max_client_frames_per_second)
        return TokenBucket(rate, rate)

    async def verify(self, token: str) -> dict[str, Any]:
        """Verify a token, refreshing a URL JWKS first when it names an unknown key id."""
        if self.refresher is not None and self.verifier.unknown_kid(token) is not None:
            if await self.refresher.refresh_for(token, time.time()):
                self._claims.clear()  # the key set changed
        return self.verify_cached(token, time.time())

    def verify_cached(self, token: str, now: float) -> dict[str, Any]:
        """The same token is typically verified at the upgrade and again at each join (its
        ``access_token``); a verified signature is remembered, the expiry is checked every
        time.  Bounded; forgotten wholesale when full or when the keys change."""
        claims = self._claims.get(token)
        if claims is not None:
            exp = claims.get("exp")
            if isinstance(exp, int | float) and exp > now:
                return claims
        claims = self.verifier.verify(token, now)  # raises with the exact error (expired, …)
        if len(self._claims) >= CLAIMS_CACHE_SIZE:
            self._claims.clear()
        self._claims[token] = claims
        return claims

    def session_verifier(self) -> Callable[[str, float], dict[str, Any]]:
        return self.verify_cached


STATE: web.AppKey[AppState] = web.AppKey("state", AppState)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)


async def refuse(state: AppState, status: int, body: bytes | dict[str, Any]) -> web.Response:
    """§1.4: handshake refusals are paced to slow reconnect storms."""
    await asyncio.sleep(state.settings.connect_error_backoff_ms / 1000)
    if isinstance(body, dict):
        return json_response(status, body)
    return web.Response(status=status, body=body)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if request.method != "GET":
        return web.Response(status=400)
    vsn = parse_vsn(request.query.get("vsn"))
    if vsn is None:
        return await refuse(state, 403, b"")  # §1.2: unsupported vsn, empty body
    api_key = request.headers.get("x-api-key") or request.query.get("apikey")
    if not api_key:
        return await refuse(state, 401, {"error": errors.ApiKeyMissing().handshake_error})
    try:
        claims = await state.verify(api_key)
    except errors.RealtimeError as err:
        return await refuse(state, err.http_status, {"error": err.handshake_error})
    limits = state.node.limits
    if limits.users_full():  # §1.4, §8
        return await refuse(state, 429, {"error": "Too many connected users"})
    if limits.joins_exceeded(time.time()):
        return await refuse(state, 429, {"error": "Too many joins per second"})

    ws = web.WebSocketResponse(compress=False, max_msg_size=state.settings.max_frame_bytes,
                               autoping=True, autoclose=True)
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # the peer vanished during the upgrade
        return ws
    session = s.Session(verify=state.session_verifier(), conn_token=api_key,
                        new_presence_key=lambda: str(uuid.uuid1()), config=state.session_config,
                        limits=state.node.limits)
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-")}
    conn = Connection(state, ws, transport, vsn, session, headers)
    state.connections.add(conn)
    conn.claims = claims
    conn.observe("connection.open", "", None, None)
    conn.arm_timer()
    try:
        await read_loop(conn, ws)
    finally:
        state.connections.discard(conn)
        conn.finish()
        conn.observe("connection.close", "", None, {"code": ws.close_code, "reason": close_reason(ws)})
    return ws


async def read_loop(conn: Connection, ws: web.WebSocketResponse) -> None:
    """One socket's frames, in order.

    Fairness: while a socket has frames buffered ``ws.receive()`` returns without yielding, so
    a flooding client would hold the event loop for a whole socket read (thousands of frames)
    while every other socket waits.  The loop therefore yields after ``READ_SLICE_S`` of work,
    and a socket over its inbound budget (``REALTIME_MAX_CLIENT_FRAMES_PER_SECOND``) is simply
    not read for a while: TCP back-pressure slows the sender, nobody else is delayed, and no
    frame is dropped."""
    loop = conn.loop
    functions = conn.app_state.node.functions
    gated = functions is not None and bool(functions.config.gates)
    budget = conn.app_state.frame_budget()
    slice_start = loop.time()
    while True:
        msg = await ws.receive()
        now = loop.time()
        conn.last_rx = now
        if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
            decoded = conn.decode(msg.data)
            if decoded is not None:
                frame: Message | BinaryBroadcastPush | None = decoded[0]
                if gated:
                    frame = await conn.gate(decoded[0])
                if frame is not None:
                    conn.handle(frame, decoded[1])
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


async def shutdown_connections(app: web.Application) -> None:
    """Drain (§2.3): each joined channel is told, then the socket is closed with 1012."""
    state = app[STATE]
    for conn in list(state.connections):
        for ch in conn.session.channels.values():
            notice = {"extension": "system", "status": "ok", "message": "Server requested disconnect"}
            conn.send(Message(ch.topic, "system", notice, ref=None, join_ref=ch.join_ref))
        conn.closing = True
    await asyncio.gather(*(c.ws.close(code=1012, message=b"server restart") for c in list(state.connections)),
                         return_exceptions=True)


async def healthcheck(request: web.Request) -> web.Response:
    return web.Response(text="ok", content_type="text/plain")


async def health(request: web.Request) -> web.Response:
    """Readiness for operators: ``degraded`` while the PubSub backbone (Redis) or a configured
    database feed is down; the node keeps serving local traffic meanwhile."""
    node = request.app[STATE].node
    pubsub = str(getattr(node.pubsub, "state", "connected"))
    body: dict[str, Any] = {"node": node.node_id, "pubsub": pubsub, "nodes": 1 + len(node.replica.peers),
                            "connections": len(request.app[STATE].connections)}
    degraded = pubsub != "connected"
    if node.changes is not None:
        body["replication"] = str(getattr(node.changes, "state", "unknown"))
        degraded = degraded or body["replication"] != "streaming"
    body["status"] = "degraded" if degraded else "ok"
    return json_response(200, body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: connections, per-trigger function metrics."""
    state = request.app[STATE]
    node = state.node
    now = time.time()
    lines = [
        "# TYPE realtime_connections gauge", f"realtime_connections {len(state.connections)}",
        "# TYPE realtime_events_per_second gauge", f"realtime_events_per_second {node.limits.events.rate(now):.3f}",
        "# TYPE realtime_cluster_nodes gauge", f"realtime_cluster_nodes {1 + len(node.replica.peers)}",
    ]
    if node.functions is not None:
        for trigger, values in sorted(node.functions.metrics().items()):
            for name, value in sorted(values.items()):
                label = trigger.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'realtime_function_{name}{{trigger="{label}"}} {float(value):g}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def ping(request: web.Request) -> web.Response:
    return json_response(200, {"message": "Success"})


def build_app(settings: Settings, node: Node, verifier: JwtVerifier,
              refresher: JwksRefresher | None = None,
              on_startup: Callable[[web.Application], Awaitable[None]] | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_frame_bytes)
    state = AppState(settings, node, verifier, refresher)
    app[STATE] = state
    for path in WS_PATHS:
        app.router.add_route("*", path, websocket_handler)
    app.router.add_get("/healthcheck", healthcheck)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    for prefix in ("", "/realtime/v1"):
        app.router.add_get(prefix + "/api/ping", ping)
    add_rest_routes(app, state)

    async def start_node(_: web.Application) -> None:
        await node.start()

    async def stop_node(_: web.Application) -> None:
        await node.stop()

    app.on_startup.append(start_node)
    if on_startup is not None:
        app.on_startup.append(on_startup)
    app.on_cleanup.append(stop_node)
    return app
