"""REST broadcast endpoints (protocol.md §1.7, §1.8, §4.6), served under ``/api`` and
``/realtime/v1/api``, with permissive CORS for browsers that call us directly."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .. import errors, logs, metrics, tracing
from ..protocol import jsonexact
from ..protocol.codec import PERSIST_TTL_MAX, Broadcast
from ..protocol.join import parse_flexible_bool
from ..protocol.keys import TOPIC_PREFIX, stream_key
from .state import DIRECTORY, AppState, state_for

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "authorization, apikey, content-type, x-client-info",
    "Access-Control-Max-Age": "86400",
}
BLANK = [errors.RestFieldError.BLANK]
INVALID = [errors.RestFieldError.INVALID]
TOO_BIG = [errors.RestFieldError.TOO_BIG]


class Rest:
    def __init__(self, state: AppState) -> None:
        self.state = state
        #: the tenant's rolling events/s, shared with WebSocket traffic (§8), in x-rate-* (§1.8)
        self.limits = state.node.limits

    def _respond(self, status: int, body: Any = None) -> web.Response:
        now = time.time()
        rolling = int(self.limits.events.rate(now))
        limit = self.limits.max_events_per_second
        headers = {
            **CORS_HEADERS,
            "x-rate-rolling": str(rolling),
            "x-rate-limit": str(limit),
            "x-rate-limit-remaining": str(max(0, limit - rolling)),
        }
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                            headers=headers)

    def _refuse(self, err: errors.RestError) -> web.Response:
        metrics.refused(type(err).__name__)
        return self._respond(err.http_status, {"message": err.message})

    async def _can_write(self, request: web.Request, sub_topic: str, claims: dict[str, Any]) -> bool:
        """§7.3 broadcast write policy for a private REST broadcast (request headers exposed)."""
        authorizer = self.state.node.authorizer
        if authorizer is None:
            return False  # no database: no policy can grant it
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await authorizer.can_write(sub_topic, claims, headers, "broadcast")

    async def _body(self, request: web.Request) -> bytes:
        """The whole body, decoded; raises the ``RestError`` of one that cannot be read."""
        try:
            # the body gets the time a request's headers get (REALTIME_HANDSHAKE_TIMEOUT_MS)
            async with asyncio.timeout(self.state.settings.handshake_timeout_ms / 1000):
                return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise errors.RestBodyTooLarge() from exc
        except TimeoutError as exc:
            raise errors.RestBodyTimeout() from exc
        except (web.RequestPayloadError, ConnectionError) as exc:  # Content-Encoding garbage, the peer gone
            raise errors.RestBodyUnreadable() from exc

    async def _authorize(self, request: web.Request) -> dict[str, Any] | None:
        """§1.8: ``Authorization: Bearer`` (scheme case-insensitive, non-empty) wins over ``apikey``."""
        token = ""
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
        if not token:
            token = request.headers.get("apikey", "")
        if not token:
            return None
        try:
            return await self.state.verify(token)
        except errors.RealtimeError:
            return None

    # POST /api/broadcast ---------------------------------------------------------------------

    async def batch(self, request: web.Request) -> web.Response:
        claims = await self._authorize(request)
        if claims is None:
            return self._refuse(errors.RestUnauthorized())
        try:
            body = jsonexact.loads(await self._body(request) or b"{}")
        except errors.RestError as err:
            return self._refuse(err)
        except jsonexact.JsonError as exc:
            return self._refuse(_json_error(exc))
        messages = body.get("messages") if isinstance(body, dict) else None
        if messages is None:
            return self._respond(422, {"errors": {"messages": BLANK}})
        if not isinstance(messages, list):
            return self._respond(422, {"errors": {"messages": INVALID}})
        problems = [self._validate(m) for m in messages]
        if any(problems):  # any invalid entry rejects the whole batch
            return self._respond(422, {"errors": {"messages": problems}})
        now = time.time()
        if self.limits.events_exceeded(now):
            return self._refuse(errors.RestRateLimited())
        if self.limits.events_remaining(now) < len(messages):
            return self._refuse(errors.RestBatchTooLarge())
        allowed: dict[str, bool] = {}
        for m in messages:
            private = _private(m.get("private")) is True
            if private and m["topic"] not in allowed:
                try:
                    allowed[m["topic"]] = await self._can_write(request, m["topic"], claims)
                except Exception:  # noqa: BLE001 - §7.3: evaluation errors count as denial
                    allowed[m["topic"]] = False
        for m in messages:
            private = _private(m.get("private")) is True
            if private and not allowed[m["topic"]]:
                continue  # §1.8: unauthorized private messages are dropped silently
            self.limits.events.add(now)
            meta = {"id": m["id"]} if m.get("id") is not None else None
            payload: dict[str, Any] = {"payload": m["payload"], "event": m["event"], "type": "broadcast"}
            if meta is not None:
                payload["meta"] = meta
            topic = TOPIC_PREFIX + m["topic"]
            # meta is also set on the Broadcast so a channel that replayed this id skips it (§4.8)
            b = Broadcast(topic, payload=payload, meta=meta)
            self.state.node.publish(stream_key(private, m["topic"]), b, claims=claims)
        return self._respond(202)

    def _validate(self, m: Any) -> dict[str, list[str]]:
        if not isinstance(m, dict):
            return {"topic": BLANK, "payload": BLANK, "event": BLANK}
        problems: dict[str, list[str]] = {}
        for key in ("payload", "topic", "event"):
            value = m.get(key)
            if value is None or value == "":
                problems[key] = BLANK
        if "payload" not in problems and not isinstance(m["payload"], dict):
            problems["payload"] = INVALID
        for key in ("topic", "event"):
            if key not in problems and not isinstance(m[key], str):
                problems[key] = INVALID
        if m.get("id") is not None and not _is_uuid(m["id"]):
            problems["id"] = INVALID
        if _private(m.get("private")) is None:  # never sent in public when meant private
            problems["private"] = INVALID
        if "payload" not in problems and len(orjson.dumps(m["payload"])) > self.state.settings.max_payload_bytes:
            problems["payload"] = TOO_BIG
        return problems

    # POST /api/broadcast/{topic}/events/{event} ---------------------------------------------

    async def single(self, request: web.Request) -> web.Response:
        claims = await self._authorize(request)
        if claims is None:
            return self._refuse(errors.RestUnauthorized())
        sub_topic = request.match_info["topic"]
        event = request.match_info["event"]
        try:
            raw = await self._body(request)
        except errors.RestError as err:
            return self._refuse(err)
        ctype = request.headers.get("content-type")
        media = ctype.split(";", 1)[0].strip().lower() if ctype is not None else None
        if media == "application/json":
            if raw.strip():
                try:
                    jsonexact.loads(raw)
                except jsonexact.JsonError as exc:
                    return self._refuse(_json_error(exc))
                data, binary = raw, False
            else:
                data, binary = b"{}", False
        elif media == "application/octet-stream":
            data, binary = raw, True
        elif media is None:
            data, binary = b"{}", False  # §1.8: accepted, body not parsed, payload {}
        else:
            return self._respond(415, {"error": errors.RestUnsupportedMedia().message})
        if len(data) > self.state.settings.max_payload_bytes:
            return self._respond(422, {"errors": {"payload": TOO_BIG}})
        now = time.time()
        if self.limits.events_exceeded(now):
            return self._refuse(errors.RestRateLimited())
        private = _private(request.query.get("private"))
        if private is None:
            return self._respond(422, {"errors": {"private": INVALID}})
        try:
            persist, ttl = _persist_query(request)
            if persist and not private:
                raise errors.PersistNotPrivate()
        except errors.UnableToPersistMessage as err:
            return self._respond(err.http_status, {"message": err.rest_message})
        if private:
            try:
                if not await self._can_write(request, sub_topic, claims):
                    return self._refuse(errors.RestForbidden())  # §1.8
            except Exception:  # noqa: BLE001 - the database could not evaluate the policy
                return self._refuse(errors.RestAuthorizationFailed())
        meta = None
        if persist:  # §4.9: stored first; broadcast only once stored, with the row's id
            headers = {k.lower(): v for k, v in request.headers.items()}
            stored = await self.state.node.persist(sub_topic, claims, headers, event, data, binary, ttl)
            if stored.id is None:
                refusal = errors.PersistDenied(sub_topic) if stored.denied else errors.PersistFailed()
                return self._respond(refusal.http_status, {"message": refusal.rest_message})
            meta = {"id": stored.id}
        self.limits.events.add(now)
        b = Broadcast(TOPIC_PREFIX + sub_topic, event=event, data=data, binary=binary, meta=meta)
        self.state.node.publish(stream_key(private, sub_topic), b, claims=claims)
        return self._respond(202)

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS_HEADERS)


def _private(value: Any) -> bool | None:
    """§1.8 ``private``: absent or null is false; else a boolean, or ``"true"``/``"false"`` in
    any case (as join flags, §3.2); ``None`` for anything else."""
    if value is None:
        return False
    if isinstance(value, bool) or isinstance(value, str) and value.lower() in ("true", "false"):
        return parse_flexible_bool(value)
    return None


def _persist_query(request: web.Request) -> tuple[bool, int | None]:
    """§4.9 ``persist=true`` or ``persist[ttl]=<seconds>`` (the latter wins); ``persist=false``
    or neither: not persisted.  Raises ``PersistParamsInvalid`` for anything else."""
    raw_ttl = request.query.get("persist[ttl]")
    if raw_ttl is not None:
        if raw_ttl.isascii() and raw_ttl.isdigit() and 1 <= int(raw_ttl) <= PERSIST_TTL_MAX:
            return True, int(raw_ttl)
        raise errors.PersistParamsInvalid()
    raw = request.query.get("persist")
    if raw is None or raw.lower() == "false":
        return False, None
    if raw.lower() == "true":
        return True, None
    raise errors.PersistParamsInvalid()


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def observed(handler: Callable[[web.Request], Awaitable[web.Response]]
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A REST broadcast with its log context (``request_id``, and ``topic`` for the single
    endpoint) and its ``realtime.rest.broadcast`` span."""
    async def observe(request: web.Request) -> web.Response:
        sub_topic = request.match_info.get("topic")
        topic = TOPIC_PREFIX + sub_topic if sub_topic is not None else None
        with logs.bind(request_id=logs.request_id(request.headers.get("X-Request-Id")), topic=topic), \
                tracing.span("realtime.rest.broadcast", topic=topic, event=request.match_info.get("event"),
                             private=request.query.get("private")) as span:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            return response

    return observe


def per_tenant(state: AppState, method: Callable[[Rest, web.Request], Awaitable[web.Response]]
               ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler for the request's tenant (with tenants in a database, the one its Host
    names; a Host naming none is answered 401 ``Tenant not found in database``, as Supabase)."""
    single = Rest(state)

    async def handle(request: web.Request) -> web.Response:
        if request.app.get(DIRECTORY) is None:
            return await method(single, request)
        try:
            tenant = await state_for(request)
        except (errors.TenantNotFound, errors.TenantSuspended):
            return single._refuse(errors.RestTenantNotFound())
        return await method(Rest(tenant), request)

    return handle


def add_rest_routes(app: web.Application, state: AppState) -> None:
    rest = Rest(state)
    for prefix in ("", "/realtime/v1"):
        batch = prefix + "/api/broadcast"
        single = prefix + "/api/broadcast/{topic:.+}/events/{event}"
        app.router.add_post(batch, observed(per_tenant(state, Rest.batch)))
        app.router.add_post(single, observed(per_tenant(state, Rest.single)))
        app.router.add_route("OPTIONS", batch, rest.preflight)
        app.router.add_route("OPTIONS", single, rest.preflight)


def _json_error(exc: jsonexact.JsonError) -> errors.RestInvalidJson:
    return errors.RestJsonTooDeep() if exc.too_deep else errors.RestInvalidJson()
