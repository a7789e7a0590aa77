"""Endpoints for operators: liveness, readiness (/health) and Prometheus metrics (/metrics)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import jwt
from aiohttp import web

from .. import metrics
from ..pubsub import Health
from .state import STATE, all_states, json_response


async def healthcheck(request: web.Request) -> web.Response:
    return web.Response(text="ok", content_type="text/plain")


async def health(request: web.Request) -> web.Response:
    """Readiness: ``degraded`` while the PubSub backbone (Redis) or a configured database feed
    is down; the node keeps serving local traffic meanwhile."""
    state = request.app[STATE]
    node = state.node
    pubsub = node.pubsub.health
    body: dict[str, Any] = {"node": node.node_id, "pubsub": pubsub.value, "nodes": 1 + len(node.replica.peers),
                            "connections": len(state.connections)}
    degraded = pubsub is not Health.CONNECTED
    if node.changes is not None:
        body["replication"] = str(node.changes.state)
        degraded = degraded or body["replication"] != "streaming"
    body["status"] = "degraded" if degraded else "ok"
    return json_response(200, body)


def loopback_peer(remote: str) -> bool:
    """A peer address on this machine: 127.0.0.0/8, ::1, or 127.x seen through a dual-stack socket."""
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def metrics_allowed(remote: str | None, headers: Mapping[str, str], secret: str | None,
                    address_header: str | None = None) -> bool:
    """Who may read ``/metrics`` (docs/metrics.md): with ``REALTIME_METRICS_JWT_SECRET`` (Supabase's
    ``METRICS_JWT_SECRET``), whoever sends ``Authorization: Bearer <a JWT signed with it>``;
    without one, only this machine — a loopback peer whose request did not come through a proxy
    (a proxy on the same machine would make every client look local)."""
    if secret is not None:
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        try:
            jwt.decode(token.strip(), secret, algorithms=["HS256", "HS384", "HS512"])
        except jwt.PyJWTError:
            return False
        return True
    proxied = ("Forwarded", "X-Forwarded-For", "X-Real-IP", *((address_header,) if address_header else ()))
    return remote is not None and loopback_peer(remote) and not any(h in headers for h in proxied)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text exposition (prometheus-client); 403 unless ``metrics_allowed``."""
    state = request.app[STATE]
    settings = state.settings
    if not metrics_allowed(request.remote, request.headers, settings.metrics_jwt_secret,
                           settings.client_address_header):
        return web.Response(status=403, body=b"")
    metrics.sync(all_states(request.app))
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE_LATEST})


async def _poll_metrics(app: web.Application) -> AsyncIterator[None]:
    """``--workers`` (multiprocess mode): every worker keeps its polled series fresh, since any
    worker may answer a scrape for all of them; its live gauges go when it stops."""
    if not metrics.multiprocess():
        yield
        return
    async def poll() -> None:
        while True:
            metrics.sync(all_states(app))
            await asyncio.sleep(metrics.POLL_S)

    task = asyncio.create_task(poll(), name="metrics-poll")
    yield
    task.cancel()
    metrics.worker_exited(os.getpid())


async def ping(request: web.Request) -> web.Response:
    return json_response(200, {"message": "Success"})


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthcheck", healthcheck)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_endpoint)
    app.cleanup_ctx.append(_poll_metrics)
    for prefix in ("", "/realtime/v1"):
        app.router.add_get(prefix + "/api/ping", ping)
