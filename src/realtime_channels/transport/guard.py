"""Connections that never finish a request are closed: the slow-request ("slowloris") guard.

aiohttp waits for a request's headers as long as the peer keeps the connection open, so a
client that opens thousands of connections and sends a byte now and then holds a descriptor each
until the process runs out, and real clients can no longer connect.  The guard sweeps the
server's connections once a second and closes those that have not completed a request's
headers within ``REALTIME_HANDSHAKE_TIMEOUT_MS`` of connecting.  A connection whose request
began (every WebSocket, once upgraded) is left alone; idle keep-alive connections are closed by
aiohttp's own keep-alive timeout.

At start the process also raises its soft descriptor limit to the hard one (each WebSocket
holds one descriptor) and logs the result.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("realtime_channels.transport")

#: how often the connections are swept
SWEEP_S = 1.0

#: transports whose connection completed a request (pruned to the live ones at every sweep)
_started: set[Any] = set()


@web.middleware
async def mark_started(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Runs once a request's headers are complete: its connection is no longer suspect."""
    if request.transport is not None:
        _started.add(request.transport)
    return await handler(request)


class SlowRequestGuard:
    def __init__(self, server: web.Server, timeout_s: float) -> None:
        self._server = server
        self._timeout = timeout_s
        #: when each live connection was first seen without a request
        self._seen: dict[Any, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.closed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweep_forever(), name="slow-request-guard")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def sweep(self, now: float) -> int:
        """Close the connections past their time without a request; returns how many."""
        closed = 0
        live = {h.transport for h in self._server.connections if h.transport is not None}
        _started.intersection_update(live)
        self._seen = {t: at for t, at in self._seen.items() if t in live}
        for transport in live:
            if transport.is_closing() or transport in _started:
                continue
            first = self._seen.setdefault(transport, now)
            if now - first > self._timeout:
                transport.close()
                closed += 1
        if closed:
            self.closed += closed
            log.info("closed %d connection(s) that sent no complete request within %.0f s", closed, self._timeout)
        return closed

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self.sweep(time.monotonic())
            except Exception:  # noqa: BLE001 - the guard must outlive any surprise
                log.exception("slow-request guard: sweep failed")


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, hard, exc)
    log.info("descriptor limit %d: at most about that many sockets at once", soft)
    return soft
