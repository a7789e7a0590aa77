"""Calling one target once: an HTTP function (signed POST) or an in-process Python function.

The result is an :class:`Outcome` that says whether the attempt succeeded, whether a failure is
worth retrying (timeouts, connection errors, 408, 429 and 5xx are; other 4xx are
not) and what the function replied.  Nothing here retries or sleeps: the engine does.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from .config import Handler
from .signing import sign

__all__ = ["FunctionContext", "Invoker", "Outcome", "Publish", "dumps"]

log = logging.getLogger(__name__)

#: publish(sub_topic, event, payload): a broadcast into a public topic (the server wires it)
Publish = Callable[[str, str, Any], None]
#: presence(sub_topic, key, payload) tracks; payload None untracks
Presence = Callable[[str, str, Mapping[str, Any] | None], None]
#: Replies larger than this are not read (and count as "no action").
MAX_REPLY_BYTES = 1 << 20
_RETRY_STATUSES = frozenset((408, 429))


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    #: the parsed reply (JSON body or return value); None when empty or not JSON
    reply: Any = None
    retry: bool = True
    #: for the log and the dead-letter list; never sent to a client
    error: str | None = None
    #: a Retry-After the function asked for, in seconds
    retry_after: float | None = None


class FunctionContext:
    """The second argument of a Python function: act on channels without holding a socket —
    broadcast (what the REST API does) and presence."""

    __slots__ = ("_presence", "_publish", "event_id", "trigger")

    def __init__(self, event_id: str, trigger: str, publish: Publish, presence: Presence | None = None) -> None:
        self.event_id = event_id
        self.trigger = trigger
        self._publish = publish
        self._presence = presence

    def broadcast(self, topic: str, event: str, payload: Any) -> None:
        """Broadcast ``event`` with ``payload`` to the public channel ``topic`` (sub-topic)."""
        self._publish(strip_prefix(topic), event, payload)

    def track(self, topic: str, key: str, payload: Mapping[str, Any]) -> None:
        """Track a presence under ``key`` on the public channel ``topic``, as a member would."""
        if self._presence is None:
            raise RuntimeError("presence is not available to functions in this server")
        self._presence(strip_prefix(topic), key, dict(payload))

    def untrack(self, topic: str, key: str) -> None:
        if self._presence is None:
            raise RuntimeError("presence is not available to functions in this server")
        self._presence(strip_prefix(topic), key, None)


def strip_prefix(topic: str) -> str:
    return topic[len("realtime:"):] if topic.startswith("realtime:") else topic


def _default(obj: Any) -> Any:
    """JSON for what realtime payloads may hold besides JSON types."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"binary": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, Decimal):
        return str(obj)  # keeps precision; a float would not
    if isinstance(obj, set | frozenset):
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS)


class Invoker:
    """Holds the HTTP session, the signing key and the service-role key."""

    def __init__(self, key: bytes | None, service_role_key: str | None, publish: Publish,
                 presence: Presence | None = None) -> None:
        self.key = key
        self.service_role_key = service_role_key
        self.publish = publish
        self.presence = presence
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            # Our own pool: a slow function must not starve other clients of connections.
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def call(self, *, trigger: str, url: str | None, handler: Handler | None, event: dict[str, Any],
                   timeout: float) -> Outcome:
        body = dumps(event)
        if handler is not None:
            return await self._call_python(trigger, handler, body, timeout)
        assert url is not None
        return await self._call_http(url, str(event["id"]), body, timeout)

    async def _call_python(self, trigger: str, handler: Handler, body: bytes, timeout: float) -> Outcome:
        # The function gets its own copy, decoded from the same JSON an HTTP function receives,
        # so it cannot change what a retry delivers.
        event = orjson.loads(body)
        ctx = FunctionContext(str(event["id"]), trigger, self.publish, self.presence)
        try:
            result = await asyncio.wait_for(handler(event, ctx), timeout)
        except TimeoutError:
            return Outcome(False, error=f"timed out after {timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - a raising function is retried
            log.warning("function %s raised on event %s: %s: %s", trigger, event["id"], type(exc).__name__, exc,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            return Outcome(False, error=f"{type(exc).__name__}: {exc}")
        return Outcome(True, reply=result)

    async def _call_http(self, url: str, msg_id: str, body: bytes, timeout: float) -> Outcome:
        ts = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(ts)}
        if self.key is not None:
            headers["webhook-signature"] = sign(self.key, msg_id, ts, body)
        if self.service_role_key:
            headers["authorization"] = f"Bearer {self.service_role_key}"
        try:
            async with self._session().post(url, data=body, headers=headers, allow_redirects=False,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.content.read(MAX_REPLY_BYTES + 1)
                status = resp.status
                retry_after = _retry_after(resp.headers.get("retry-after"))
        except TimeoutError:
            return Outcome(False, error=f"timed out after {timeout:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome(False, error=f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return Outcome(True, reply=_parse_reply(raw, url, msg_id))
        retry = status >= 500 or status in _RETRY_STATUSES
        return Outcome(False, retry=retry, error=f"HTTP {status}", retry_after=retry_after if retry else None)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # the HTTP-date form is not worth a clock dependency here
    return seconds if seconds >= 0 else None


def _parse_reply(raw: bytes, url: str, msg_id: str) -> Any:
    """A 2xx body: JSON → the reply; empty → nothing; anything else → nothing, with a log line."""
    if not raw.strip():
        return None
    if len(raw) > MAX_REPLY_BYTES:
        log.warning("function %s replied to event %s with more than %d bytes; ignoring the reply",
                    url, msg_id, MAX_REPLY_BYTES)
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.warning("function %s replied to event %s with a body that is not JSON; no action taken", url, msg_id)
        return None
