"""A minimal Supabase Realtime client for the benchmarks' Python load clients (bench/clients.py,
bench/attacks.py): one WebSocket, V1 or V2 framing, a hot path that skips JSON parsing, and an
open-loop pacer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

V2 = "2.0.0"
HEARTBEAT_S = 25.0
JOIN_TIMEOUT_S = 30.0

Frame = tuple[Any, Any, str, str, Any]


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def commands() -> AsyncIterator[dict[str, Any]]:
    """The JSON commands arriving on stdin, one per line, until it closes."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield orjson.loads(line)


def run_main(main: Awaitable[None]) -> None:
    """Run a client process's coroutine on uvloop when installed, then exit at once (sockets
    still open are the server's to notice)."""
    try:
        import uvloop

        uvloop.run(main)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]
    sys.stdout.flush()
    os._exit(0)


def number_after(raw: str, key: str) -> float | None:
    """The JSON number right after ``key`` (e.g. ``'"ts":'``) in a frame, without parsing it."""
    i = raw.find(key)
    if i < 0:
        return None
    i += len(key)
    j = i
    while j < len(raw) and raw[j] in "0123456789.-eE+":
        j += 1
    try:
        return float(raw[i:j])
    except ValueError:
        return None


# --- one socket -------------------------------------------------------------------------------------


class Socket:
    """One Supabase Realtime WebSocket (V1 JSON objects or V2 arrays).

    Every frame first goes to ``on_data`` (the hot path: return True when it was a counted
    delivery); the others are decoded, replies resolve :meth:`call`, the rest go to
    ``on_control``.  Heartbeats go out every 25 s as the official clients send them."""

    def __init__(self, ws: ClientConnection, vsn: str, on_data: Callable[[str], bool],
                 on_control: Callable[[Frame], None]) -> None:
        self.ws = ws
        self.vsn = vsn
        self.on_data = on_data
        self.on_control = on_control
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.refs = 0
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._heartbeat())]

    @classmethod
    async def open(cls, port: int, token: str, vsn: str = V2, *, on_data: Callable[[str], bool] = lambda raw: False,
                   on_control: Callable[[Frame], None] = lambda f: None) -> Socket:
        ws = await connect(f"ws://127.0.0.1:{port}/realtime/v1/websocket?apikey={token}&vsn={vsn}",
                           compression=None, max_size=None, ping_interval=None, open_timeout=JOIN_TIMEOUT_S)
        return cls(ws, vsn, on_data, on_control)

    def encode(self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> str:
        if self.vsn == V2:
            return orjson.dumps([join_ref, ref, topic, event, payload]).decode()
        return orjson.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref,
                             "join_ref": join_ref}).decode()

    def decode(self, raw: str | bytes) -> Frame | None:
        if isinstance(raw, bytes):
            return None  # kind-4 broadcasts: the hot path counts them, nothing else is binary
        try:
            m = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if self.vsn == V2 and isinstance(m, list) and len(m) >= 5:
            return m[0], m[1], m[2], m[3], m[4]
        if isinstance(m, dict):
            return m.get("join_ref"), m.get("ref"), m.get("topic", ""), m.get("event", ""), m.get("payload")
        return None

    async def send(self, join_ref: str | None, topic: str, event: str, payload: Any) -> None:
        await self.ws.send(self.encode(join_ref, None, topic, event, payload))

    async def call(self, join_ref: str | None, topic: str, event: str, payload: Any,
                   timeout: float = JOIN_TIMEOUT_S) -> Any:
        """Push with a ref and return the reply's payload (``{"status": …, "response": …}``)."""
        return await self.call_text(lambda ref: self.encode(join_ref, ref, topic, event, payload), timeout)

    async def call_text(self, make: Callable[[str], str], timeout: float = JOIN_TIMEOUT_S) -> Any:
        """:meth:`call` for a frame written by hand: ``make(ref)`` returns its text."""
        self.refs += 1
        ref = str(self.refs)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ref] = fut
        try:
            await self.ws.send(make(ref))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(ref, None)

    async def join(self, topic: str, config: dict[str, Any], token: str, **extra: Any) -> tuple[str, Any]:
        """phx_join; returns (join_ref, reply payload)."""
        ref = str(self.refs + 1)
        reply = await self.call(ref, topic, "phx_join", {"config": config, "access_token": token, **extra})
        return ref, reply

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                text = raw if isinstance(raw, str) else raw.decode("latin-1")
                if self.on_data(text):
                    continue
                frame = self.decode(raw)
                if frame is None:
                    continue
                ref = frame[1]
                if frame[3] == "phx_reply" and isinstance(ref, str) and ref in self.pending:
                    fut = self.pending[ref]
                    if not fut.done():
                        fut.set_result(frame[4])
                elif frame[2] != "phoenix":
                    self.on_control(frame)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    async def _heartbeat(self) -> None:
        with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
            while True:
                await asyncio.sleep(HEARTBEAT_S)  # the clients' heartbeat period
                await self.ws.send(self.encode(None, "hb", "phoenix", "heartbeat", {}))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)


async def paced(rate: Callable[[], float], action: Callable[[int], Awaitable[None] | None],
                stop: asyncio.Event) -> None:
    """Call ``action(j)`` at ``rate()`` per second (open loop: action j at t0 + j / rate; a new
    rate restarts the schedule) until ``stop`` is set."""
    current, t0, j = -1.0, 0.0, 0
    while not stop.is_set():
        r = rate()
        if r != current:
            current, t0, j = r, time.monotonic(), 0
        if current <= 0:
            await asyncio.sleep(0.05)
            continue
        due = int((time.monotonic() - t0) * current)
        while j < due:
            out = action(j)
            if out is not None:
                await out
            j += 1
        await asyncio.sleep(min(0.01, 1 / current))
