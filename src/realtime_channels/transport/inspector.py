"""The inspector: a page served by the server itself (``/inspector``) for watching channels live,
and the JSON figures its charts poll (``/api/inspector/stats``).

The page is three static files shipped inside the package (``realtime_channels/inspector``); it
speaks the wire protocol on its own, so what it shows is exactly what any client would get.
The stats endpoint only reads counters the server keeps anyway: totals, never rates, so several
pages polling at their own pace each derive per-second figures from successive answers.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from aiohttp import web

from .. import errors
from ..cdc.changes import PostgresChanges
from .rest import Rest
from .state import STATE, json_response

#: the page's files and the media types browsers need (ES modules require a JavaScript type)
FILES = {
    "index.html": "text/html",
    "inspector.js": "text/javascript",
    "phoenix.js": "text/javascript",
    "charts.js": "text/javascript",
    "inspector.css": "text/css",
}
NO_CACHE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _read(name: str) -> bytes:
    return resources.files("realtime_channels").joinpath("inspector", name).read_bytes()


def _file_handler(name: str) -> Any:
    body = _read(name)  # read once: the files are part of the installed package
    content_type = FILES[name]

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=NO_CACHE)

    return serve


def stats_body(request: web.Request) -> dict[str, Any]:
    state = request.app[STATE]
    node = state.node
    changes = node.changes
    lag = changes.lag_bytes if isinstance(changes, PostgresChanges) else None
    return {
        "connections": len(state.connections),
        # counted where the joins/s and events/s limits count them (protocol.md §8)
        "joins": node.limits.joins.total,
        "messages": node.limits.events.total,
        "replication": str(changes.state) if changes is not None else None,
        "replication_lag_bytes": lag,
        "node": node.node_id,
        "time": time.time(),
    }


def add_inspector_routes(app: web.Application) -> None:
    """``GET /inspector`` and its assets; ``GET /api/inspector/stats`` (also under
    ``/realtime/v1``), which needs a key that verifies for this server, as REST broadcast does."""
    rest = Rest(app[STATE])

    async def stats(request: web.Request) -> web.Response:
        if await rest._authorize(request) is None:  # Bearer, else the apikey header (§1.8)
            refusal = errors.RestUnauthorized()
            return json_response(refusal.http_status, {"message": refusal.message})
        return json_response(200, stats_body(request))

    index = _file_handler("index.html")
    app.router.add_get("/inspector", index)
    app.router.add_get("/inspector/", index)
    for name in FILES.keys() - {"index.html"}:
        app.router.add_get(f"/inspector/{name}", _file_handler(name))
    for prefix in ("", "/realtime/v1"):
        app.router.add_get(prefix + "/api/inspector/stats", stats)
