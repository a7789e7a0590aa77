"""The listening socket: WebSocket upgrades served directly on asyncio, the rest by aiohttp.

Each accepted connection starts with ``Front``, which reads the request head.  A well-formed
``GET`` upgrade to one of the WebSocket paths is admitted (``ws.admit``: tenant, ``vsn``, API
key, limits), answered ``101`` and from then on served by a ``DirectConnection``: the asyncio
protocol of the socket itself, which parses the client's frames as they arrive
(``protocol.wsread``) and hands each message to the session — no HTTP request object, no
WebSocket response object, no reader task and no queue per socket.  Anything else (REST, the
operator endpoints, a malformed head, an upgrade on a kept-alive connection) is handed, with
the bytes read so far, to aiohttp's own request handler, which serves it as if it had accepted
the connection itself.

A connection that has not sent a complete head within ``REALTIME_HANDSHAKE_TIMEOUT_MS`` is
closed (the slow-request guard covers the connections aiohttp holds).

Reading is fair as in ``ws.read_loop``: a socket yields to the others after ``READ_SLICE_S`` of
work, and a socket over its frame budget is not read until the budget refills (TCP
back-pressure slows the sender; nothing is dropped).
"""

from __future__ import annotations

import asyncio
import contextvars
import http
import logging
from collections.abc import Coroutine
from typing import Any

import orjson
from aiohttp import web

from .. import logs
from ..protocol import handshake
from ..protocol import session as s
from ..protocol.codec import Vsn
from ..protocol.limits import TokenBucket
from ..protocol.wsframe import build_control_frame
from ..protocol.wsread import (BINARY, CLOSE, PING, TEXT, BadHead, FrameReader, RequestHead, Violation,
                               close_payload, parse_close, parse_head, upgrade_response)
from .app import WS_PATHS
from .state import DIRECTORY, STATE, AppState
from .ws import (READ_SLICE_S, Admitted, Connection, admit, admit_now, new_session, pace, release_address,
                 x_headers)

log = logging.getLogger("realtime_channels.transport")

#: the request heads read here at most; a longer one is aiohttp's to answer
MAX_HEAD_BYTES = 65_536
#: after our close frame, how long the peer has to answer with its own before the cut
CLOSE_TIMEOUT_S = 10.0


class DirectConnection(Connection, asyncio.Protocol):
    """One upgraded socket: the asyncio protocol of its transport and the session's adapter."""

    __slots__ = ("budget", "close_code", "close_text", "closed", "ctx", "finished", "paused", "reader",
                 "slice_start")

    def __init__(self, state: AppState, transport: asyncio.BaseTransport, vsn: Vsn, session: s.Session,
                 headers: dict[str, str], address: str | None, ctx: contextvars.Context) -> None:
        super().__init__(state, transport, vsn, session, headers, address)
        self.reader = FrameReader(state.settings.max_frame_bytes)
        self.budget: TokenBucket = state.frame_budget()
        self.slice_start = 0.0
        self.paused = False
        self.finished = False
        #: the code and reason of the close frame sent or received first
        self.close_code: int | None = None
        self.close_text: str | None = None
        #: done when the transport is gone (made by the first close)
        self.closed: asyncio.Future[None] | None = None
        #: the log context of this socket (request and socket ids), entered for its callbacks
        self.ctx = ctx

    # asyncio.Protocol: entered in the socket's own log context ---------------------------------

    def data_received(self, data: bytes) -> None:
        self.ctx.run(self._received, data)

    def eof_received(self) -> bool | None:
        return False  # the transport closes itself; connection_lost finishes the socket

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.run(self._lost)

    # input -----------------------------------------------------------------------------------

    def start(self, claims: dict[str, Any], rest: bytes) -> None:
        """Called once the 101 is written, in the socket's context: open, read what followed."""
        self.open(claims)
        if rest:
            self._received(rest)
        if not self.paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def _received(self, data: bytes) -> None:
        self.reader.feed(data)
        if not self.paused:
            self.slice_start = self.loop.time()
            self._pump()

    def _pump(self) -> None:
        """Handle the buffered frames until none is whole, or this socket must wait its turn."""
        loop = self.loop
        reader = self.reader
        while True:
            try:
                frame = reader.next()
            except Violation as v:
                # the stream cannot be read on: our close frame, then our end of the TCP
                # connection; what the peer still sends is read and dropped (so that closing
                # does not reset the connection before the peer has read the close frame)
                log.info("closing conn=%s: %s (close %d)", self.conn_id, v.reason, v.code)
                reader.fail()
                self.close(v.code, v.reason)
                if self.transport.can_write_eof() and not self.transport.is_closing():
                    self.transport.write_eof()
                return
            if frame is None:
                return
            opcode, payload = frame
            now = loop.time()
            self.last_rx = now
            if opcode == CLOSE:
                self._peer_closed(payload)
                return
            if self.closing or self.close_due is not None:
                continue  # after our close frame (or once condemned), only the peer's close counts
            if opcode == TEXT:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    self._pause()
                    self.close(1007, "text frame is not UTF-8")
                    return
                decoded = self.decode(text)
                if decoded is not None:
                    self.handle(*decoded)
            elif opcode == BINARY:
                decoded = self.decode(payload)
                if decoded is not None:
                    self.handle(*decoded)
            elif opcode == PING:
                self.transport.write(build_control_frame(0xA, payload))
                continue
            else:  # PONG
                continue
            if self.close_due is not None:  # condemned: read nothing more until the close is sent
                self._pause()
                return
            if self.closing:
                continue
            self.arm_timer()
            if not self.budget.take(now):
                self._pause()
                loop.call_later(self.budget.wait(now), self._resume)
                return
            if loop.time() - self.slice_start > READ_SLICE_S:
                self._pause()
                loop.call_soon(self._resume)
                return

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            if not self.transport.is_closing():
                self.transport.pause_reading()

    def _resume(self) -> None:
        if not self.paused or self.close_due is not None:
            return
        self.paused = False
        self.slice_start = self.loop.time()
        self._pump()
        if not self.paused and not self.transport.is_closing():
            self.transport.resume_reading()

    # closing ---------------------------------------------------------------------------------

    def send_close(self, code: int, reason: str) -> asyncio.Future[Any]:
        """Our close frame; the peer answers with its own (then the TCP connection is closed) or
        is cut off after ``CLOSE_TIMEOUT_S``.  While waiting, frames other than close are read
        and dropped."""
        if self.close_code is None:
            self.close_code, self.close_text = code, reason
        transport = self.transport
        if not transport.is_closing():
            transport.write(build_control_frame(CLOSE, close_payload(code, reason)))
            self.loop.call_later(CLOSE_TIMEOUT_S, transport.abort)
            if self.paused:  # the peer's close must be read, also on a condemned socket
                self.paused = False
                transport.resume_reading()
                self.loop.call_soon(self._pump)  # frames already buffered: the close may be there
        if self.closed is None:
            self.closed = self.loop.create_future()
            if transport.is_closing() and self.finished:
                self.closed.set_result(None)
        return self.closed

    def _peer_closed(self, payload: bytes) -> None:
        try:
            code, reason = parse_close(payload)
        except Violation as v:
            code, reason = v.code, v.reason
        if not self.closing:  # the peer began: answer with its code (1000 when it gave none)
            self.closing = True
            self.close_code, self.close_text = code, reason or None
            answer = code if code not in (1005, 1006) else 1000
            self.transport.write(build_control_frame(CLOSE, close_payload(answer, "")))
        self.transport.close()

    def _lost(self) -> None:
        self.finished = True
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        self.finish(self.close_code, self.close_text)


class Front(asyncio.Protocol):
    """A new connection until its request head is read: upgrade it here, or hand it to aiohttp."""

    __slots__ = ("app", "buf", "server", "single", "timer", "transport")

    def __init__(self, app: web.Application, server: web.Server, handshake_timeout_s: float,
                 single: AppState | None) -> None:
        self.app = app
        self.server = server
        #: the state of the one tenant, when tenants are not kept in a database
        self.single = single
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            handshake_timeout_s, self._too_slow)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.transport = None

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _too_slow(self) -> None:
        self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            log.info("closed a connection that sent no complete request in time")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not buf.startswith(b"GET "[:len(buf)]):
            self._hand_off(buf)
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                self._hand_off(buf)
            else:
                self.buf = buf
            return
        try:
            head = parse_head(buf[:end], MAX_HEAD_BYTES)
        except BadHead:
            self._hand_off(buf)
            return
        if head.path not in WS_PATHS or not head.is_websocket_upgrade():
            self._hand_off(buf)
            return
        self._stop_timer()
        transport = self.transport
        assert transport is not None
        transport.pause_reading()
        self.buf = b""
        ctx = contextvars.copy_context()  # the socket's log context from here on
        ctx.run(logs.set_fields, request_id=logs.request_id(head.headers.get("X-Request-Id")))
        if self.single is not None and ctx.run(upgrade_now, self.single, transport, head, buf[end + 4:]):
            return
        _spawn(upgrade(self.app, transport, head, buf[end + 4:]), ctx)

    def _hand_off(self, buf: bytes) -> None:
        """aiohttp serves this connection from now on, from the first byte it sent."""
        self._stop_timer()
        transport = self.transport
        assert transport is not None
        self.transport = None
        handler = self.server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(buf)


#: upgrades and refusals under way (kept referenced until they finish)
_UPGRADING: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None], ctx: contextvars.Context | None = None) -> None:
    task = asyncio.get_running_loop().create_task(coro, context=ctx)
    _UPGRADING.add(task)
    task.add_done_callback(_UPGRADING.discard)


async def upgrade(app: web.Application, transport: asyncio.Transport, head: RequestHead, rest: bytes) -> None:
    """Admit the upgrade and switch the connection to a ``DirectConnection``, or refuse it."""
    try:
        await _upgrade(app, transport, head, rest)
    except Exception:  # noqa: BLE001 - one upgrade's surprise must not reach the loop
        log.exception("WebSocket upgrade failed")
        transport.abort()


async def _upgrade(app: web.Application, transport: asyncio.Transport, head: RequestHead, rest: bytes) -> None:
    remote = _remote(transport)
    state, admitted = await admit(app, head.method, head.headers, head.query, remote)
    if isinstance(admitted, handshake.Refusal):
        await pace(state, remote, admitted)
        _respond(transport, admitted.status, admitted.body)
        return
    if not transport.is_closing():  # else the peer vanished during the checks
        _accept(admitted, transport, head, rest)
    else:
        release_address(state, admitted.address)


def upgrade_now(state: AppState, transport: asyncio.Transport, head: RequestHead, rest: bytes) -> bool:
    """The upgrade of a known tenant's socket, without a task when nothing must be waited for
    (the common case); ``False`` when it must be ``upgrade``d instead.  A refusal still waits
    (it is paced), in a task of its own."""
    remote = _remote(transport)
    admitted = admit_now(state, head.method, head.headers, head.query, remote)
    if admitted is None:
        return False
    if isinstance(admitted, handshake.Refusal):
        _spawn(_refuse(state, transport, remote, admitted))
        return True
    _accept(admitted, transport, head, rest)
    return True


async def _refuse(state: AppState, transport: asyncio.Transport, remote: str | None,
                  refusal: handshake.Refusal) -> None:
    await pace(state, remote, refusal)
    _respond(transport, refusal.status, refusal.body)


def _remote(transport: asyncio.Transport) -> str | None:
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) else None


def _accept(admitted: Admitted, transport: asyncio.Transport, head: RequestHead, rest: bytes) -> None:
    key = head.websocket_key()
    if key is None:
        release_address(admitted.state, admitted.address)
        _respond(transport, 400, None, b"Bad WebSocket handshake: Sec-WebSocket-Key or -Version")
        return
    _switch(admitted, transport, head.headers, key, rest)


def _switch(admitted: Admitted, transport: asyncio.Transport, headers: Any, key: str, rest: bytes) -> None:
    state = admitted.state
    session = new_session(state, admitted.checked.api_key)
    ctx = contextvars.copy_context()  # the request id of this task, and the socket id below
    conn = DirectConnection(state, transport, admitted.checked.vsn, session, x_headers(headers), admitted.address,
                            ctx)
    ctx.run(logs.set_fields, socket_id=logs.socket_id(conn.conn_id))
    transport.write(upgrade_response(key))
    transport.set_protocol(conn)
    conn.ctx.run(conn.start, admitted.claims, rest)


def _respond(transport: asyncio.Transport, status: int, body: Any, text: bytes | None = None) -> None:
    """A refusal: the status, the JSON body (or an empty one), and the connection closed."""
    if text is not None:
        payload, kind = text, b"text/plain; charset=utf-8"
    elif body is None:
        payload, kind = b"", b""
    else:
        payload, kind = orjson.dumps(dict(body)), b"application/json"
    phrase = http.HTTPStatus(status).phrase.encode("ascii")
    lines = [b"HTTP/1.1 %d %s" % (status, phrase), b"Content-Length: %d" % len(payload), b"Connection: close"]
    if kind:
        lines.append(b"Content-Type: " + kind)
    transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + payload)
    transport.close()


async def start_server(app: web.Application, server: web.Server, host: str, port: int, reuse_port: bool,
                       handshake_timeout_s: float) -> asyncio.Server:
    """Listen on ``host:port`` with ``Front`` for every connection."""
    loop = asyncio.get_running_loop()
    single = app[STATE] if DIRECTORY not in app else None
    return await loop.create_server(lambda: Front(app, server, handshake_timeout_s, single), host, port,
                                    reuse_address=True, reuse_port=reuse_port or None, backlog=2048)

