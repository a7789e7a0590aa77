"""One attempt at a Redis session for :class:`~.redis.RedisPubSub`: its two connections, what
its tasks share, the idle heartbeat that finds a half-open connection, and log helpers."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub as RedisPubSubConn
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

HEARTBEAT_S = 1.0
DEAD_AFTER_S = 3.0
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0


class SessionLost(Exception):
    """Ends a session from inside (heartbeat silence, outbox overflow)."""


class Session:
    """The two connections of one attempt and what the tasks share about them."""

    def __init__(self, pub: Redis, sub: Redis, ps: RedisPubSubConn, now: float) -> None:
        self.pub = pub
        self.sub = sub
        self.ps = ps
        self.last_rx = now
        self.unconfirmed = 0  # (UN)SUBSCRIBE replies still expected from Redis
        self.all_confirmed = asyncio.Event()
        self.all_confirmed.set()
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def abort(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the session already reported why it ended


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def heartbeat(s: Session) -> None:
    """A silent subscribe connection (half-open TCP) is found by PINGing it when idle."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        idle = loop.time() - s.last_rx
        if idle > DEAD_AFTER_S:
            raise SessionLost(f"no reply from Redis for {idle:.1f}s")
        if idle >= HEARTBEAT_S:
            await s.ps.ping()


def client(url: str, node_id: str, role: str) -> Redis:
    """No client-side retries: a failed command ends the session and the supervisor owns
    reconnection (and re-subscription), so the state it reports is the truth."""
    return Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_keepalive=True,
        client_name=f"realtime-channels-{node_id}-{role}",
    )
