"""Tenants at run time (docs/tenants.md): a request's tenant is the first label of its ``Host``
header, port stripped (``realtime-dev.supabase-realtime:4000`` → ``realtime-dev``), as in
Supabase; forwarded-host headers are not trusted for it.

Each tenant runs as a node of its own — its hub, limits, presence, backbone namespace
(``rc:<external_id>:`` on Redis), JWT verifier, change feed and database broadcasts — so nothing
crosses between tenants.  A tenant's node is started on its first request and stopped (its sockets
closed, as Supabase's reload does) when the tenant changes or is deleted: through the API on any
node, announced by the database (``TenantStore.listen``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .. import errors
from ..config import Settings
from ..protocol.codec import Message
from ..runtime import Runtime, build_node, load_verifier
from ..tenants.model import Tenant, settings_for, tenant_of_host
from ..tenants.store import TenantStore
from .state import AppState

__all__ = ["TenantDirectory", "tenant_of_host"]

log = logging.getLogger(__name__)


class TenantDirectory:
    def __init__(self, base: Settings, store: TenantStore, app_state: Callable[[Settings, Runtime], AppState]) -> None:
        self.base = base
        self.store = store
        self._app_state = app_state
        self._running: dict[str, tuple[Tenant, AppState, Runtime]] = {}
        self._starting: dict[str, asyncio.Task[tuple[Tenant, AppState, Runtime] | None]] = {}
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.migrate()
        self._listener = asyncio.create_task(self.store.listen(self.reload, self._reload_all), name="tenant-changes")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        for external_id in list(self._running):
            await self._stop(external_id, notice=None)

    def states(self) -> list[AppState]:
        return [state for _, state, _ in self._running.values()]

    def running(self, external_id: str) -> AppState | None:
        entry = self._running.get(external_id)
        return entry[1] if entry is not None else None

    async def resolve(self, external_id: str) -> AppState:
        """The tenant's running state; raises ``TenantNotFound`` / ``TenantSuspended``."""
        entry = self._running.get(external_id)
        if entry is None:
            task = self._starting.get(external_id)
            if task is None:
                task = self._starting[external_id] = asyncio.create_task(self._start(external_id))
                task.add_done_callback(lambda _: self._starting.pop(external_id, None))
            entry = await asyncio.shield(task)
        if entry is None:
            raise errors.TenantNotFound(external_id)
        if entry[0].suspend:
            raise errors.TenantSuspended()
        return entry[1]

    async def _start(self, external_id: str) -> tuple[Tenant, AppState, Runtime] | None:
        tenant = await self.store.get(external_id)
        if tenant is None:
            return None
        settings = settings_for(self.base, tenant)
        verifier, refresher, closers = await load_verifier(settings)
        node = build_node(settings, prefix=f"rc:{tenant.external_id}:")
        runtime = Runtime(node, verifier, refresher, closers)
        await node.start()
        state = self._app_state(settings, runtime)
        entry = (tenant, state, runtime)
        self._running[external_id] = entry
        log.info("tenant %s started", external_id)
        return entry

    async def reload(self, external_id: str) -> None:
        """The tenant changed (or was deleted): stop it; its next request starts it afresh."""
        await self._stop(external_id, notice=errors.Notice.DISCONNECT)

    async def _reload_all(self) -> None:
        for external_id in list(self._running):
            await self.reload(external_id)

    async def _stop(self, external_id: str, notice: str | None) -> None:
        entry = self._running.pop(external_id, None)
        if entry is None:
            return
        _, state, runtime = entry
        closing: list[Any] = []
        for conn in list(state.connections):
            if notice is not None:
                for ch in conn.session.channels.values():
                    payload = {"extension": "system", "status": "ok", "message": notice}
                    conn.send(Message(ch.topic, "system", payload, ref=None, join_ref=ch.join_ref))
            task = conn.close(1012, "tenant reloaded")
            if task is not None:
                closing.append(task)
        await asyncio.gather(*closing, return_exceptions=True)
        await runtime.node.stop()
        await runtime.close()
        log.info("tenant %s stopped", external_id)
