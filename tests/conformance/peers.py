"""Drive the OFFICIAL Realtime clients against our server and wait for what they observe.

Two kinds of peers record everything they see into an :class:`EventLog`:

* :class:`NodePeer` — one ``node tests/js/peer.mjs`` process hosting any number of
  supabase-js / realtime-js clients (JSON-line commands in, JSON-line events out);
* :class:`PyClient` — one Python ``realtime`` 2.34.1 ``AsyncRealtimeClient``.

Tests never sleep: they wait for a recorded event matching a predicate, with a timeout, and a
timeout fails the test with the events seen so far. Negative assertions ("X was NOT
delivered") are made after a *barrier*: a later message on the same connection that the
server must have written after X (see protocol.md §4.2 on per-sender ordering).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from realtime import AsyncRealtimeClient
from realtime._async.channel import AsyncRealtimeChannel

Event = dict[str, Any]
Predicate = Callable[[Event], bool]
T = TypeVar("T")

JS_DIR = Path(__file__).resolve().parents[1] / "js"
PEER_JS = JS_DIR / "peer.mjs"

# Waits for something the server should do promptly. Generous enough for a loaded CI box,
# far below the clients' own 10 s push/join timeouts.
WAIT = 5.0


class PeerError(RuntimeError):
    """A Node peer command failed (the JS client threw or rejected)."""


class EventLog:
    """An append-only record of observed events that can be awaited by predicate."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[Event] = []
        self._waiters: list[asyncio.Future[None]] = []

    def add(self, event: Event) -> None:
        self.events.append(event)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def matching(self, pred: Predicate) -> list[Event]:
        return [e for e in self.events if pred(e)]

    def mark(self) -> int:
        """A position in the log; pass it as ``since`` to only consider later events."""
        return len(self.events)

    async def wait_until(
        self, check: Callable[[list[Event]], T | None], timeout: float, what: str, since: int = 0
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = check(self.events[since:])
            if result is not None:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                tail = "\n  ".join(json.dumps(e, default=str)[:400] for e in self.events[-25:])
                raise AssertionError(
                    f"[{self.name}] timed out after {timeout}s waiting for {what}; last events:\n  {tail}"
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.remove(waiter)

    async def wait_for(
        self, pred: Predicate, timeout: float = WAIT, what: str = "an event", since: int = 0
    ) -> Event:
        def check(events: list[Event]) -> Event | None:
            return next((e for e in events if pred(e)), None)

        return await self.wait_until(check, timeout, what, since)

    async def wait_count(
        self, pred: Predicate, count: int, timeout: float = WAIT, what: str = "events", since: int = 0
    ) -> list[Event]:
        def check(events: list[Event]) -> list[Event] | None:
            found = [e for e in events if pred(e)]
            return found[:count] if len(found) >= count else None

        return await self.wait_until(check, timeout, f"{count} x {what}", since)


def is_status(ch: str, status: str | None = None) -> Predicate:
    return lambda e: e["type"] == "status" and e["ch"] == ch and (status is None or e["status"] == status)


def is_broadcast(ch: str, event: str | None = None, payload: Any = None) -> Predicate:
    def pred(e: Event) -> bool:
        return (
            e["type"] == "broadcast"
            and e["ch"] == ch
            and (event is None or e["event"] == event)
            and (payload is None or e["payload"] == payload)
        )

    return pred


def is_presence(ch: str, kind: str, key: str | None = None) -> Predicate:
    return lambda e: (
        e["type"] == "presence" and e["ch"] == ch and e["kind"] == kind and (key is None or e.get("key") == key)
    )


class NodePeer:
    """One Node process hosting official JS clients; see tests/js/peer.mjs for the protocol."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log = EventLog("node")
        self.stderr: list[str] = []
        self._ids = itertools.count(1)
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    @classmethod
    async def start(cls) -> NodePeer:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed (scripts/test installs the JS deps)")
        if not (JS_DIR / "node_modules" / "@supabase" / "supabase-js").is_dir():
            raise RuntimeError(f"JS dependencies missing: run `npm ci` in {JS_DIR}")
        proc = await asyncio.create_subprocess_exec(
            node,
            str(PEER_JS),
            cwd=str(JS_DIR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=32 * 1024 * 1024,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        peer = cls(proc)
        await peer.log.wait_for(lambda e: e["type"] == "ready", timeout=30, what="the node peer to start")
        return peer

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                event = {"type": "garbage", "line": line.decode(errors="replace")}
            self.log.add(event)
        self.log.add({"type": "exited"})

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def call(self, cmd: str, *, timeout: float = 15.0, **args: Any) -> Any:
        """Run a peer command and return its value; raise :class:`PeerError` if it failed."""
        result = await self.try_call(cmd, timeout=timeout, **args)
        if not result["ok"]:
            raise PeerError(f"{cmd} failed: {result['error']}")
        return result["value"]

    async def try_call(self, cmd: str, *, timeout: float = 15.0, **args: Any) -> Event:
        assert self.proc.stdin is not None
        ident = next(self._ids)
        self.proc.stdin.write((json.dumps({"id": ident, "cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.log.wait_for(
            lambda e: (e["type"] == "result" and e["id"] == ident) or e["type"] == "exited",
            timeout=timeout,
            what=f"the result of {cmd}",
        )

    # -- convenience wrappers -------------------------------------------------------------

    async def add_client(
        self,
        name: str,
        server: Any,
        vsn: str = "2.0.0",
        *,
        token: str | None = None,
        key: str | None = None,
        kind: str | None = None,
        timeout_ms: int = 10000,
        log: bool = False,
        host: str | None = None,
    ) -> str:
        """Create a client; returns the WebSocket URL it will open (``host``: the Host header
        its upgrade carries, e.g. a tenant's name).

        vsn 2.0.0 defaults to supabase-js ``createClient(<http url>, key)`` (…/realtime/v1/websocket);
        vsn 1.0.0 to ``new RealtimeClient('<ws url>/socket', {vsn: '1.0.0'})`` (…/socket/websocket).
        ``token`` is supplied through the clients' ``accessToken`` callback, so it is sent as the
        join's ``access_token`` while ``key`` stays the connection's ``apikey``.
        """
        kind = kind or ("supabase" if vsn == "2.0.0" else "realtime")
        url = server.http_url if kind == "supabase" else f"{server.ws_url}/socket"
        value = await self.call(
            "client",
            client=name,
            kind=kind,
            url=url,
            key=key or server.anon_key,
            vsn=vsn,
            token=token,
            timeout=timeout_ms,
            log=log,
            host=host,
        )
        return str(value["endpoint"])

    async def subscribe(
        self,
        client: str,
        ch: str,
        topic: str,
        *,
        config: dict[str, Any] | None = None,
        presence: bool = False,
        postgres: list[dict[str, Any]] | None = None,
        expect: str | None = "SUBSCRIBED",
        timeout: float = WAIT,
        join_timeout_ms: int | None = None,
    ) -> Event:
        """Subscribe and wait for the first status callback; assert it is ``expect``.

        ``presence`` registers presence listeners and ``postgres`` adds ``postgres_changes``
        listeners with those filters, before subscribing (as applications must).
        """
        args: dict[str, Any] = {
            "client": client,
            "ch": ch,
            "topic": topic,
            "config": config or {},
            "presence": presence,
            "postgres": postgres or [],
        }
        if join_timeout_ms is not None:
            args["timeout"] = join_timeout_ms
        await self.call("subscribe", **args)
        status = await self.log.wait_for(is_status(ch), timeout=timeout, what=f"a subscribe status for {ch}")
        if expect is not None:
            assert status["status"] == expect, f"{ch}: expected {expect}, got {status}"
        return status

    async def wait_broadcast(
        self, ch: str, event: str | None = None, payload: Any = None, timeout: float = WAIT
    ) -> Event:
        return await self.log.wait_for(
            is_broadcast(ch, event, payload), timeout=timeout, what=f"broadcast {event!r} on {ch}"
        )

    def broadcasts(self, ch: str, event: str | None = None) -> list[Event]:
        return self.log.matching(is_broadcast(ch, event))

    async def close(self) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.proc.stdin.write(b'{"cmd":"exit"}\n')
                await self.proc.stdin.drain()
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)


class PyClient:
    """The Python ``realtime`` 2.34.1 client (always vsn 1.0.0) with an event log.

    ``path`` is appended to the server's http URL to form the client URL: the client swaps
    ``http``→``ws`` and appends ``/websocket`` (protocol.md §1.1), and derives its REST base by
    stripping ``/socket`` or ``/websocket``.
    """

    def __init__(self, server: Any, name: str = "py", *, token: str | None = None, path: str = "/realtime/v1") -> None:
        self.name = name
        self.client = AsyncRealtimeClient(f"{server.http_url}{path}", token or server.anon_key, auto_reconnect=False)
        self.log = EventLog(name)
        self.channels: dict[str, AsyncRealtimeChannel] = {}

    async def subscribe(
        self,
        ch: str,
        topic: str,
        *,
        broadcast: dict[str, Any] | None = None,
        presence_key: str = "",
        presence: bool = False,
        private: bool = False,
        postgres: list[dict[str, Any]] | None = None,
        expect: str | None = "SUBSCRIBED",
    ) -> Event:
        """Subscribe (the client waits for the join outcome itself) and return the status event.

        ``postgres`` entries are keyword arguments of ``on_postgres_changes`` (event, table,
        schema, filter, select).
        """
        params: Any = {
            "config": {
                "broadcast": broadcast or {"ack": False, "self": False},
                "presence": {"key": presence_key, "enabled": False},
                "private": private,
            }
        }
        channel = self.client.channel(topic, params)
        self.channels[ch] = channel
        log = self.log

        channel.on_broadcast(
            "*",
            lambda p: log.add(
                {
                    "type": "broadcast",
                    "ch": ch,
                    "event": p["event"],
                    "payload": p["payload"],
                    "raw": dict(p),
                }
            ),
        )
        channel.on_system(lambda p: log.add({"type": "system", "ch": ch, "payload": p.model_dump()}))
        for binding in postgres or []:
            channel.on_postgres_changes(
                callback=lambda p: log.add({"type": "postgres_changes", "ch": ch, "payload": _copy(p)}),
                **binding,
            )
        if presence:
            # Registering presence callbacks before subscribing makes the join presence-enabled.
            channel.on_presence_sync(
                lambda: log.add({"type": "presence", "ch": ch, "kind": "sync", "state": _copy(channel.presence_state())})
            )
            channel.on_presence_join(
                lambda key, current, new: log.add(
                    {"type": "presence", "ch": ch, "kind": "join", "key": key, "presences": _copy(new)}
                )
            )
            channel.on_presence_leave(
                lambda key, current, left: log.add(
                    {"type": "presence", "ch": ch, "kind": "leave", "key": key, "presences": _copy(left)}
                )
            )

        def on_status(status: Any, err: Exception | None) -> None:
            text = str(err) if err is not None else None
            reason = None
            if text is not None:
                with contextlib.suppress(ValueError, AttributeError):
                    reason = json.loads(text).get("reason")
            log.add({"type": "status", "ch": ch, "status": str(status.value), "error": text, "reason": reason})

        await asyncio.wait_for(channel.subscribe(on_status), 15)
        event = await self.log.wait_for(is_status(ch), what=f"a subscribe status for {ch}")
        if expect is not None:
            assert event["status"] == expect, f"{ch}: expected {expect}, got {event}"
        return event

    async def wait_broadcast(
        self, ch: str, event: str | None = None, payload: Any = None, timeout: float = WAIT
    ) -> Event:
        return await self.log.wait_for(
            is_broadcast(ch, event, payload), timeout=timeout, what=f"broadcast {event!r} on {ch}"
        )

    def broadcasts(self, ch: str, event: str | None = None) -> list[Event]:
        return self.log.matching(is_broadcast(ch, event))

    async def close(self) -> None:
        # Cancel the client's own timers (push timeouts, rejoin back-off) so nothing outlives
        # the test's event loop, then close the socket.
        for channel in list(self.client.channels.values()) + list(self.channels.values()):
            channel.rejoin_timer.reset()
            channel.join_push.destroy()
            for push in list(channel.messages_waiting_for_ack.values()):
                push.destroy()
            for task in list(channel._background_tasks):
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.close(), 5)


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def unique_topic(prefix: str) -> str:
    """A sub-topic no other test uses, so tests sharing the session server never interfere."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- fixtures (import them into a test module to use them) ---------------------------------


@pytest.fixture
async def node() -> AsyncIterator[NodePeer]:
    """One Node peer per test; it can host several JS clients."""
    peer = await NodePeer.start()
    try:
        yield peer
    finally:
        await peer.close()
        if peer.stderr:
            # Shown by pytest only when the test fails.
            print("node stderr (tail):\n" + "\n".join(peer.stderr[-40:]))


@pytest.fixture
async def py_clients(server: Any) -> AsyncIterator[Callable[..., PyClient]]:
    """Factory for Python clients bound to the session server; all are closed at test end."""
    made: list[PyClient] = []

    def make(name: str = "py", **kwargs: Any) -> PyClient:
        client = PyClient(server, name, **kwargs)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.close()
