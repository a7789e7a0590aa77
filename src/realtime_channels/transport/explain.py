"""``GET /api/explain/join``, ``GET /api/explain/change`` and ``GET /api/trace`` (docs/explain.md).

Authorization: the ``apikey`` header (or the bearer token) must be a valid token of this server,
as for every REST call.  The token explained is the caller's own — ``Authorization: Bearer``, or
the ``apikey`` alone.  Explaining another token (``?token=…``) and tracing need the caller to
hold the service role.  Answers name roles, policies and reasons; never a row's values or a
message's payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import orjson
import psycopg
from aiohttp import web

from .. import errors
from ..messages.authz import AuthzUnavailable, ChannelAuthorizer
from ..messages.explain import policy_verdicts
from ..protocol.join import parse_flexible_bool
from ..protocol.keys import TOPIC_PREFIX
from .state import AppState, state_for

SERVICE_ROLE = "service_role"
#: events a slow trace reader may fall behind by before the oldest are dropped
TRACE_QUEUE = 1000
KEEPALIVE_S = 15.0
EXTENSIONS = ("broadcast", "presence")
CORS = {"Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Headers": "authorization, apikey, content-type, x-client-info"}


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=CORS)


class Explain:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def _caller(self, request: web.Request) -> tuple[dict[str, Any] | None, str | None, web.Response | None]:
        """(the caller's claims, the token to explain, or the refusal to answer with)."""
        bearer = ""
        scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":
            bearer = value.strip()
        apikey = request.headers.get("apikey", "")
        key = apikey or bearer
        if not key:
            return None, None, _json(401, {"message": errors.RestUnauthorized().message})
        try:
            key_claims = await self.state.verify(key)
        except errors.RealtimeError:
            return None, None, _json(401, {"message": errors.RestUnauthorized().message})
        subject = bearer or apikey
        caller: dict[str, Any] | None = key_claims
        if bearer and bearer != key:
            with contextlib.suppress(errors.RealtimeError):
                caller = await self.state.verify(bearer)
        other = request.query.get("token")
        if other is not None:
            if (caller or {}).get("role") != SERVICE_ROLE:
                return None, None, _json(403, {"message": "explaining another token needs the service role"})
            subject = other
        return caller, subject, None

    async def join(self, request: web.Request) -> web.Response:
        caller, subject, refusal = await self._caller(request)
        if refusal is not None or subject is None:
            return refusal or _json(401, {})
        sub_topic = request.query.get("topic", "").removeprefix(TOPIC_PREFIX)
        if not sub_topic:
            return _json(422, {"errors": {"topic": [errors.RestFieldError.BLANK]}})
        private = parse_flexible_bool(request.query.get("private", "false"))
        settings, node = self.state.settings, self.state.node
        checks: list[dict[str, Any]] = []
        answer: dict[str, Any] = {"topic": sub_topic, "private": private, "checks": checks}

        def done(reason: str | None) -> web.Response:
            answer["verdict"] = "refused" if reason else "allowed"
            answer["reason"] = reason
            return _json(200, answer)

        try:
            claims = await self.state.verify(subject)
        except errors.RealtimeError as err:
            checks.append({"check": "token", "ok": False, "detail": err.reason})
            return done(err.reason)
        exp = claims.get("exp")
        checks.append({"check": "token", "ok": True, "detail": "valid" + (
            f", expires in {int(exp - time.time())} s" if isinstance(exp, int | float) else ", no expiry"),
            "role": claims.get("role"), "claims": claims})
        if settings.private_only and not private:
            only = errors.PrivateOnly()
            checks.append({"check": "private only", "ok": False, "detail": only.reason})
            return done(only.reason)
        limits = node.limits
        full = limits.users_full()
        rate = limits.joins.rate(time.time()) + limits.remote_joins
        checks.append({"check": "limits", "ok": not full and rate < limits.max_joins_per_second,
                       "detail": f"{limits.users + limits.remote_users} of {limits.max_concurrent_users} users, "
                                 f"{rate:.0f} of {limits.max_joins_per_second} joins/s, "
                                 f"at most {settings.max_channels_per_client} channels per socket"})
        if full:
            return done(errors.ConnectionRateLimitReached().reason)
        if not private:
            return done(None)
        authorizer = node.authorizer
        if authorizer is None:
            checks.append({"check": "private channels", "ok": False,
                           "detail": "no database is configured, so no policy can grant access"})
            return done(errors.Unauthorized(sub_topic).reason)
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            read = await authorizer.can_read(sub_topic, claims, headers, EXTENSIONS)
            write = {ext: await authorizer.can_write(sub_topic, claims, headers, ext) for ext in EXTENSIONS}
            verdicts = (await policy_verdicts(authorizer, sub_topic, claims, headers, EXTENSIONS)
                        if isinstance(authorizer, ChannelAuthorizer) else {})
        except AuthzUnavailable as exc:
            checks.append({"check": "policies", "ok": False,
                           "detail": f"the database could not evaluate the policies ({exc})"})
            return done(errors.Unauthorized(sub_topic).reason)
        for purpose, rights in (("read", read), ("write", write)):
            for ext in EXTENSIONS:
                checks.append({"check": f"{ext} {purpose}", "ok": rights.get(ext, False),
                               "policies": [v.as_json() for v in verdicts.get((purpose, ext), [])]})
        if not read.get("broadcast") and not read.get("presence"):
            return done(errors.Unauthorized(sub_topic).reason)
        return done(None)

    async def change(self, request: web.Request) -> web.Response:
        caller, subject, refusal = await self._caller(request)
        if refusal is not None or subject is None:
            return refusal or _json(401, {})
        q = request.query
        missing = [k for k in ("table", "pk") if not q.get(k)]
        if missing:
            return _json(422, {"errors": {k: [errors.RestFieldError.BLANK] for k in missing}})
        event = q.get("event", "*").upper()
        if event not in ("*", "INSERT", "UPDATE", "DELETE"):
            return _json(422, {"errors": {"event": [errors.RestFieldError.INVALID]}})
        changes = self.state.node.changes
        dsn, publication = getattr(changes, "dsn", None), getattr(changes, "publication", None)
        if not isinstance(dsn, str) or not isinstance(publication, str):
            return _json(200, {"verdict": "not delivered", "reasons": [errors.PostgresNotConfigured().message],
                               "checks": []})
        try:
            claims = await self.state.verify(subject)
        except errors.RealtimeError as err:
            return _json(200, {"verdict": "not delivered", "reasons": [f"token: {err.reason}"],
                               "checks": [{"check": "token", "ok": False, "detail": err.reason}]})
        from ..cdc.explain import explain_change

        privileged = (caller or {}).get("role") == SERVICE_ROLE
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                answer = await explain_change(conn, publication=publication, schema=q.get("schema", "public"),
                                              table=q["table"], pk=q["pk"], claims=claims, event=event,
                                              filter_text=q.get("filter") or None, privileged=privileged)
        except ValueError as exc:
            return _json(422, {"errors": {"pk": [str(exc)]}})
        except (psycopg.Error, OSError):
            return _json(503, {"message": errors.ChangesUnavailable().message})
        return _json(200, answer)

    async def trace(self, request: web.Request) -> web.StreamResponse:
        caller, _subject, refusal = await self._caller(request)
        if refusal is not None:
            return refusal
        if (caller or {}).get("role") != SERVICE_ROLE:
            return _json(403, {"message": "tracing needs the service role"})
        sub_topic = request.query.get("topic", "").removeprefix(TOPIC_PREFIX)
        if not sub_topic:
            return _json(422, {"errors": {"topic": [errors.RestFieldError.BLANK]}})
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(TRACE_QUEUE)
        dropped = 0

        def watcher(event: dict[str, Any]) -> None:
            nonlocal dropped
            if queue.full():
                queue.get_nowait()
                dropped += 1
            queue.put_nowait(event)

        resp = web.StreamResponse(headers={**CORS, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        trace = self.state.node.trace
        trace.watch(sub_topic, watcher)
        try:
            await resp.write(_sse("ready", {"topic": sub_topic, "node": self.state.node.node_id}))
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        event = await queue.get()
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if dropped:
                    await resp.write(_sse("dropped", {"events": dropped}))
                    dropped = 0
                await resp.write(_sse(str(event.get("kind", "message")), event))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            trace.unwatch(sub_topic, watcher)
        return resp


def _sse(kind: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def add_explain_routes(app: web.Application) -> None:
    def route(method: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                state = await state_for(request)
            except (errors.TenantNotFound, errors.TenantSuspended):
                return _json(401, {"message": errors.RestTenantNotFound().message})
            response: web.StreamResponse = await method(Explain(state), request)
            return response
        return handle

    for prefix in ("", "/realtime/v1"):
        app.router.add_get(prefix + "/api/explain/join", route(Explain.join))
        app.router.add_get(prefix + "/api/explain/change", route(Explain.change))
        app.router.add_get(prefix + "/api/trace", route(Explain.trace))
