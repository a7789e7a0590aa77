"""``GET /api/presence/{topic}/count`` (docs/protocol.md §5.8): how many are present in a topic,
without its state — the read for rooms too large to list.

Authorized as the REST broadcast endpoints are (``Authorization: Bearer`` or ``apikey``).  A
private topic (``?private=true``) needs presence-read on it (§7.3), or the service role; a public
one only a valid token.
"""

from __future__ import annotations

from aiohttp import web

from .. import errors
from ..protocol.join import parse_flexible_bool
from ..protocol.keys import presence_stream_key
from .rest import Rest
from .state import STATE, state_for

__all__ = ["add_occupancy_routes"]


async def presence_count(request: web.Request) -> web.Response:
    try:
        state = await state_for(request)
    except (errors.TenantNotFound, errors.TenantSuspended):
        return Rest(request.app[STATE])._refuse(errors.RestTenantNotFound())
    rest = Rest(state)
    claims = await rest._authorize(request)
    if claims is None:
        return rest._refuse(errors.RestUnauthorized())
    sub_topic = request.match_info["topic"]
    raw = request.query.get("private", "false")
    if raw.lower() not in ("true", "false"):
        return rest._respond(422, {"errors": {"private": [errors.RestFieldError.INVALID]}})
    private = parse_flexible_bool(raw)
    if private and claims.get("role") != "service_role":
        authorizer = state.node.authorizer
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            allowed = authorizer is not None and (
                await authorizer.can_read(sub_topic, claims, headers, ["presence"])).get("presence", False)
        except Exception:  # noqa: BLE001 - the database could not evaluate the policy
            return rest._refuse(errors.RestAuthorizationFailed())
        if not allowed:
            return rest._refuse(errors.RestForbidden())
    keys, metas = state.node.presence_counts(presence_stream_key(private, sub_topic))
    return rest._respond(200, {"topic": sub_topic, "private": private, "keys": keys, "metas": metas})


def add_occupancy_routes(app: web.Application) -> None:
    for prefix in ("", "/realtime/v1"):
        app.router.add_get(prefix + "/api/presence/{topic:.+}/count", presence_count)
