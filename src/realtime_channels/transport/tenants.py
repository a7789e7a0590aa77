"""Supabase's tenant API, as far as one tenant defined by the environment needs it:
``GET``/``HEAD /api/tenants/{external_id}/health``, the route Supabase's self-host docker compose
uses as the ``realtime`` service's healthcheck.

Theory of operation
-------------------
* **Who may ask**: as Supabase's ``/api`` pipeline, exactly one ``Authorization: Bearer <JWT>``
  header whose token (URL-decoded, whitespace removed) verifies with ``API_JWT_SECRET``
  (``REALTIME_API_JWT_SECRET``).  Without that setting the tenant's own keys verify it (the
  tenant's secret and JWKS), which is what the self-host stack amounts to: there the anon key is
  signed with the one ``JWT_SECRET`` both variables are set to.  Anything else: ``403`` with an
  empty body, before the tenant is looked up (Supabase's order).
* **Which tenant**: the one the environment defines, ``SELF_HOST_TENANT_NAME`` (default
  ``realtime-dev``, the name Supabase's compose healthcheck asks for).  Another id answers
  ``404 {"message": "not found"}`` as Supabase answers an unknown tenant.  (WebSockets and
  ``/api/broadcast`` accept any ``Host``: with one tenant every host names it.)
* **The answer** is Supabase's: ``200 {"data": {...}}`` whether healthy or not (Supabase's
  compose relies on ``curl -f``, which fails only on an error status, so an unhealthy but
  running server stays up).  ``db_connected``: a connection to the database opens and answers
  ``select 1`` now (at most one probe at a time; callers arriving meanwhile share it);
  ``replication_connected``: the change feed is streaming; ``connected_cluster``: the clients
  connected to the tenant on the whole cluster (Supabase's count, not a count of nodes);
  ``healthy``: the backbone is up and, with a database configured, it is connected.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import jwt
from aiohttp import web

from .. import errors
from ..pubsub import Health
from .state import DIRECTORY, STATE, AppState, json_response

#: a database that has not answered this long after the probe started is reported disconnected
#: (Supabase's compose healthcheck gives up after 5 s)
DB_PROBE_TIMEOUT_S = 3.0
_HS_ALGORITHMS = ["HS256", "HS384", "HS512"]


async def _authorized(request: web.Request, state: AppState) -> bool:
    """Supabase's ``check_auth``: exactly one ``Authorization`` header, ``Bearer `` (as written),
    then a token that verifies."""
    values = request.headers.getall("Authorization", [])
    if len(values) != 1 or not values[0].startswith("Bearer "):
        return False
    token = "".join(urllib.parse.unquote(values[0][len("Bearer "):]).split())
    if not token:
        return False
    secret = state.settings.api_jwt_secret
    if secret is not None:
        try:
            jwt.decode(token, secret, algorithms=_HS_ALGORITHMS, options={"verify_aud": False})
        except jwt.PyJWTError:
            return False
        return True
    try:
        await state.verify(token)
    except errors.RealtimeError:
        return False
    return True


class DatabaseProbe:
    """``select 1`` on a fresh connection; concurrent callers share the probe in flight."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._running: asyncio.Task[bool] | None = None

    async def connected(self) -> bool:
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._probe(), name="tenant-health-db-probe")
        return await asyncio.shield(self._running)

    async def _probe(self) -> bool:
        import psycopg

        try:
            async with asyncio.timeout(DB_PROBE_TIMEOUT_S):
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=max(1, int(DB_PROBE_TIMEOUT_S)))
                try:
                    await conn.execute("select 1")
                finally:
                    await conn.close()
        except (OSError, TimeoutError, psycopg.Error):
            return False
        return True


class TenantApi:
    """What the tenant routes of one application keep: the database probe (none without a
    database)."""

    def __init__(self, dsn: str | None) -> None:
        self.probe = DatabaseProbe(dsn) if dsn else None
        #: with tenants in a database: a probe per tenant database
        self.probes: dict[str, DatabaseProbe] = {}

    def probe_for(self, dsn: str | None) -> DatabaseProbe | None:
        if not dsn:
            return None
        probe = self.probes.get(dsn)
        if probe is None:
            probe = self.probes[dsn] = DatabaseProbe(dsn)
        return probe


TENANT_API: web.AppKey[TenantApi] = web.AppKey("tenant-api", TenantApi)


async def health_report(state: AppState, probe: DatabaseProbe | None) -> dict[str, Any]:
    node = state.node
    backbone_up = node.pubsub.health is Health.CONNECTED
    db_connected = await probe.connected() if probe is not None else False
    replication = node.changes is not None and str(node.changes.state) == "streaming"
    return {
        "healthy": backbone_up and (probe is None or db_connected),
        "db_connected": db_connected,
        "replication_connected": replication,
        "connected_cluster": node.limits.users + node.limits.remote_users,
        "region": state.settings.region,
        "node": node.node_id,
    }


async def tenant_health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not await _authorized(request, state):
        return web.Response(status=403, body=b"")
    directory = request.app.get(DIRECTORY)
    if directory is not None:  # tenants in a database (docs/tenants.md): that tenant's node
        try:
            tenant = await directory.resolve(request.match_info["external_id"])
        except (errors.TenantNotFound, errors.TenantSuspended):
            err = errors.AdminTenantNotFound()
            return json_response(err.http_status, {"message": err.rest_message})
        probe = request.app[TENANT_API].probe_for(tenant.settings.database_url)
        return json_response(200, {"data": await health_report(tenant, probe)})
    if request.match_info["external_id"] != state.settings.self_host_tenant_name:
        err = errors.AdminTenantNotFound()
        return json_response(err.http_status, {"message": err.rest_message})
    return json_response(200, {"data": await health_report(state, request.app[TENANT_API].probe)})


def add_tenant_routes(app: web.Application) -> None:
    """Routes of Supabase's ``/api/tenants`` scope this server has (HEAD comes with GET)."""
    app[TENANT_API] = TenantApi(app[STATE].settings.database_url)
    app.router.add_get("/api/tenants/{external_id}/health", tenant_health)


__all__ = ["DB_PROBE_TIMEOUT_S", "DatabaseProbe", "TenantApi", "add_tenant_routes", "health_report"]
