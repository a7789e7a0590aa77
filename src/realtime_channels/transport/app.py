"""The aiohttp application: WebSocket paths, REST, operator endpoints, node lifecycle, drain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import errors
from ..auth import JwksRefresher, JwtVerifier
from ..config import Settings
from ..node import Node
from ..protocol.codec import Message
from ..tenants.store import TenantStore
from .admin import add_admin_routes
from .directory import TenantDirectory
from .explain import add_explain_routes
from .guard import mark_started
from .inspector import add_inspector_routes
from .occupancy import add_occupancy_routes
from .ops import add_ops_routes
from .rest import add_rest_routes
from .state import DIRECTORY, STATE, AppState, all_states
from .tenants import add_tenant_routes
from .ws import close_frame_of, websocket_handler

WS_PATHS = ("/socket/websocket", "/realtime/v1/websocket", "/websocket")


def build_app(settings: Settings, node: Node, verifier: JwtVerifier,
              refresher: JwksRefresher | None = None,
              on_startup: Callable[[web.Application], Awaitable[None]] | None = None,
              tenants: TenantStore | None = None) -> web.Application:
    """``tenants``: tenants live in that store (docs/tenants.md); each request is served by the
    node of the tenant its Host names.  Without it the environment defines the one tenant."""
    app = web.Application(client_max_size=settings.max_frame_bytes, middlewares=[mark_started])
    state = AppState(settings, node, verifier, refresher)
    app[STATE] = state
    directory: TenantDirectory | None = None
    if tenants is not None:
        directory = TenantDirectory(settings, tenants, lambda s, r: AppState(s, r.node, r.verifier, r.refresher))
        app[DIRECTORY] = directory
        add_admin_routes(app, tenants, directory, settings.api_jwt_secret or settings.effective_jwt_secret)
    for path in WS_PATHS:
        app.router.add_route("*", path, websocket_handler)
    add_ops_routes(app)
    add_rest_routes(app, state)
    add_explain_routes(app)
    add_occupancy_routes(app)
    add_inspector_routes(app)
    add_tenant_routes(app)

    async def start_node(_: web.Application) -> None:
        await node.start()
        if directory is not None:
            await directory.start()

    async def stop_node(_: web.Application) -> None:
        if directory is not None:
            await directory.stop()
        await node.stop()

    app.on_startup.append(start_node)
    if on_startup is not None:
        app.on_startup.append(on_startup)
    app.on_cleanup.append(stop_node)
    return app


async def shutdown_connections(app: web.Application) -> None:
    """Drain (§2.3): each joined channel is told, then the socket is closed with 1012."""
    closing = []
    for conn in [c for state in all_states(app) for c in state.connections]:
        for ch in conn.session.channels.values():
            notice = {"extension": "system", "status": "ok", "message": errors.Notice.DISCONNECT}
            conn.send(Message(ch.topic, "system", notice, ref=None, join_ref=ch.join_ref))
        task = conn.close(*close_frame_of(errors.ServerRestart))
        if task is not None:
            closing.append(task)
    await asyncio.gather(*closing, return_exceptions=True)
