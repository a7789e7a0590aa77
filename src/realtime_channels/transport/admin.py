"""Supabase's tenant admin API (docs/tenants.md): ``GET/POST /api/tenants``,
``GET/PUT/DELETE /api/tenants/{external_id}``, ``POST /api/tenants/{external_id}/reload``.

Authorized as Supabase authorizes it: ``Authorization: Bearer <JWT>`` signed with
``API_JWT_SECRET`` (``REALTIME_API_JWT_SECRET``; unset, the server's JWT secret); anything else
is answered 403 with an empty body.  Bodies and answers have Supabase's shapes: ``{"tenant": {…}}``
in, ``{"data": …}`` out, 201 on creation, 422 ``{"errors": {field: [message]}}`` for bad input
(nothing is written then), 404 ``{"message": errors.AdminTenantNotFound().message}``.
"""

from __future__ import annotations

from typing import Any

import jwt
import orjson
from aiohttp import web

from .. import errors
from ..tenants.model import parse, render
from ..tenants.store import TenantStore
from .directory import TenantDirectory

__all__ = ["add_admin_routes"]


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class Admin:
    def __init__(self, store: TenantStore, directory: TenantDirectory, secret: str | None) -> None:
        self.store = store
        self.directory = directory
        self.secret = secret

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme != "Bearer" or not token.strip() or not self.secret:
            return False
        try:
            jwt.decode(token.strip(), self.secret, algorithms=["HS256", "HS384", "HS512"],
                       options={"verify_aud": False, "require": []})
        except jwt.PyJWTError:
            return False
        return True

    async def _body(self, request: web.Request) -> Any:
        try:
            return orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            return None

    async def index(self, request: web.Request) -> web.Response:
        return _json(200, {"data": [render(t) for t in await self.store.list()]})

    async def show(self, request: web.Request) -> web.Response:
        tenant = await self.store.get(request.match_info["external_id"])
        if tenant is None:
            return _json(404, {"message": errors.AdminTenantNotFound().message})
        return _json(200, {"data": render(tenant)})

    async def create(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        params = body.get("tenant") if isinstance(body, dict) else None
        current = None
        if isinstance(params, dict) and isinstance(params.get("external_id"), str):
            current = await self.store.get(params["external_id"])
        return await self._put(params, None, current)

    async def update(self, request: web.Request) -> web.Response:
        external_id = request.match_info["external_id"]
        body = await self._body(request)
        params = body.get("tenant") if isinstance(body, dict) else None
        return await self._put(params, external_id, await self.store.get(external_id))

    async def _put(self, params: Any, external_id: str | None, current: Any) -> web.Response:
        tenant, problems = parse(params, external_id=external_id, current=current)
        if tenant is None:
            return _json(422, {"errors": problems})
        stored, created = await self.store.put(tenant)
        await self.directory.reload(stored.external_id)  # this node at once; the others on NOTIFY
        return _json(201 if created else 200, {"data": render(stored)})

    async def delete(self, request: web.Request) -> web.Response:
        external_id = request.match_info["external_id"]
        await self.store.delete(external_id)
        await self.directory.reload(external_id)
        return web.Response(status=204)

    async def reload(self, request: web.Request) -> web.Response:
        external_id = request.match_info["external_id"]
        if await self.store.get(external_id) is None:
            return _json(404, {"message": errors.AdminTenantNotFound().message})
        await self.store.notify(external_id)
        await self.directory.reload(external_id)
        return web.Response(status=204)


def add_admin_routes(app: web.Application, store: TenantStore, directory: TenantDirectory, secret: str | None) -> None:
    admin = Admin(store, directory, secret)

    def guarded(handler: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            if not admin.authorized(request):
                return web.Response(status=403)
            response: web.StreamResponse = await handler(request)
            return response
        return handle

    app.router.add_get("/api/tenants", guarded(admin.index))
    app.router.add_post("/api/tenants", guarded(admin.create))
    app.router.add_get("/api/tenants/{external_id}", guarded(admin.show))
    app.router.add_put("/api/tenants/{external_id}", guarded(admin.update))
    app.router.add_delete("/api/tenants/{external_id}", guarded(admin.delete))
    app.router.add_post("/api/tenants/{external_id}/reload", guarded(admin.reload))
