"""What the handlers of one application share: settings, the node, verified claims, sockets."""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from ..auth import JwksRefresher, JwtVerifier
from ..auth.claims import ClaimsCache
from ..config import Settings
from ..node import Node
from ..protocol import session as s
from ..protocol.codec import Message
from ..protocol.limits import TokenBucket


class Socket(Protocol):
    """An open WebSocket as the application sees it (``transport.ws.Connection``)."""

    @property
    def session(self) -> s.Session: ...

    def send(self, msg: Message) -> None: ...

    def close(self, code: int, reason: str, abort_after: float | None = None) -> Awaitable[Any] | None: ...


class AppState:
    def __init__(self, settings: Settings, node: Node, verifier: JwtVerifier,
                 refresher: JwksRefresher | None) -> None:
        self.settings = settings
        self.node = node
        self.claims = ClaimsCache(verifier, refresher)
        #: the open sockets (``transport.ws.Connection``), for /health, /metrics and drain
        self.connections: set[Socket] = set()
        #: open sockets per client address, when ``max_connections_per_address`` is set
        self.per_address: collections.Counter[str] = collections.Counter()
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
            resume_enabled=node.resume_enabled,
            presence_over_limit=settings.presence_over_limit,
        )

    @property
    def tenant(self) -> str:
        """The tenant's id (``external_id``): the one the environment defines is
        ``REALTIME_SELF_HOST_TENANT_NAME``; a stored tenant's settings carry its own."""
        return self.settings.self_host_tenant_name

    def frame_budget(self) -> TokenBucket:
        """A socket's inbound frame budget (``REALTIME_MAX_CLIENT_FRAMES_PER_SECOND``)."""
        rate = float(self.settings.max_client_frames_per_second)
        return TokenBucket(rate, rate)

    def client_address(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The client's address: the last entry of ``client_address_header`` (the one the
        proxy in front added), else the TCP peer's."""
        name = self.settings.client_address_header
        if name is not None:
            forwarded = headers.get(name, "").rsplit(",", 1)[-1].strip()
            if forwarded:
                return forwarded
        return peer or ""

    async def verify(self, token: str) -> dict[str, Any]:
        return await self.claims.verify(token, time.time())


STATE: web.AppKey[AppState] = web.AppKey("state", AppState)


class Directory(Protocol):
    """Tenants kept in a database (transport/directory.py)."""

    async def resolve(self, external_id: str) -> AppState: ...

    def states(self) -> list[AppState]: ...


DIRECTORY: web.AppKey[Directory] = web.AppKey("directory", Directory)


async def state_for(request: web.Request) -> AppState:
    """The state of the request's tenant (``state_for_host``)."""
    return await state_for_host(request.app, request.headers.get("Host"))


async def state_for_host(app: web.Application, host: str | None) -> AppState:
    """The state of a request's tenant: with tenants in a database, the one its Host names
    (raises ``TenantNotFound`` / ``TenantSuspended``); otherwise the one the environment defines."""
    directory = app.get(DIRECTORY)
    if directory is None:
        return app[STATE]
    from ..tenants.model import tenant_of_host

    return await directory.resolve(tenant_of_host(host))


def all_states(app: web.Application) -> list[AppState]:
    directory = app.get(DIRECTORY)
    return [app[STATE], *(directory.states() if directory is not None else [])]


def json_response(status: int, body: Any) -> web.Response:
    """A JSON body with the exact ``Content-Type: application/json`` Supabase sends."""
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
