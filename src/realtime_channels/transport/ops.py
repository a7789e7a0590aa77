"""Endpoints for operators: liveness, readiness (/health) and Prometheus metrics."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..pubsub import Health
from .state import STATE, json_response


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


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: connections, events/s, nodes, per-trigger function metrics."""
    state = request.app[STATE]
    node = state.node
    now = time.time()
    lines = [
        "# TYPE realtime_connections gauge", f"realtime_connections {len(state.connections)}",
        "# TYPE realtime_events_per_second gauge", f"realtime_events_per_second {node.limits.events.rate(now):.3f}",
        "# TYPE realtime_cluster_nodes gauge", f"realtime_cluster_nodes {1 + len(node.replica.peers)}",
    ]
    if node.functions is not None:
        for trigger, values in sorted(node.functions.metrics().items()):
            for name, value in sorted(values.items()):
                label = trigger.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'realtime_function_{name}{{trigger="{label}"}} {float(value):g}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def ping(request: web.Request) -> web.Response:
    return json_response(200, {"message": "Success"})


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthcheck", healthcheck)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    for prefix in ("", "/realtime/v1"):
        app.router.add_get(prefix + "/api/ping", ping)
