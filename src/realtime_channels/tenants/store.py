"""Tenants kept in the server's own database, in Supabase's ``_realtime`` schema (docs/tenants.md).

The tables have Supabase Realtime's names and columns (``_realtime.tenants``,
``_realtime.extensions``), created by versioned migrations that only add what is missing, so a
schema Supabase's server wrote is read as it is.  Secrets are encrypted as Supabase encrypts them
(``crypto``).  Every change is announced with ``NOTIFY realtime_channels_tenants, '<external_id>'``;
each server listens and reloads that tenant, so an API call on one node applies on all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
import psycopg
from psycopg.types.json import Jsonb

from .crypto import Crypto
from .model import ENCRYPTED, LIMITS, Tenant

__all__ = ["CHANNEL", "TenantStore"]

log = logging.getLogger(__name__)

CHANNEL: Final = "realtime_channels_tenants"
_LOCK: Final = 0x72635F74656E  # advisory lock of the migrations ("rc_ten")

_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    create schema if not exists _realtime;
    create table if not exists _realtime.tenants (
        id uuid primary key default gen_random_uuid(),
        name text,
        external_id text not null unique,
        jwt_secret text,
        jwt_jwks jsonb,
        postgres_cdc_default text default 'postgres_cdc_rls',
        max_concurrent_users integer,
        max_events_per_second integer,
        max_bytes_per_second integer,
        max_channels_per_client integer,
        max_joins_per_second integer,
        max_presence_events_per_second integer default 1000,
        max_payload_size_in_kb integer default 3000,
        suspend boolean default false,
        private_only boolean not null default false,
        presence_enabled boolean not null default false,
        max_client_presence_events_per_window integer,
        client_presence_window_ms integer,
        inserted_at timestamp(0) without time zone not null default (now() at time zone 'utc'),
        updated_at timestamp(0) without time zone not null default (now() at time zone 'utc'));
    create table if not exists _realtime.extensions (
        id uuid primary key default gen_random_uuid(),
        type text,
        settings jsonb,
        tenant_external_id text references _realtime.tenants (external_id) on delete cascade,
        inserted_at timestamp(0) without time zone not null default (now() at time zone 'utc'),
        updated_at timestamp(0) without time zone not null default (now() at time zone 'utc'));
    create unique index if not exists extensions_tenant_external_id_type_index
        on _realtime.extensions (tenant_external_id, type);
    """,
)
_COLUMNS: Final = ("max_concurrent_users", "max_events_per_second", "max_bytes_per_second", "max_channels_per_client",
                   "max_joins_per_second", "max_presence_events_per_second", "max_payload_size_in_kb",
                   "max_client_presence_events_per_window", "client_presence_window_ms")
_SELECT: Final = (
    "select t.id::text, t.external_id, t.name, t.jwt_secret, t.jwt_jwks, " + ", ".join(f"t.{c}" for c in _COLUMNS)
    + ", coalesce(t.suspend, false), coalesce(t.private_only, false), coalesce(t.presence_enabled, false),"
    " to_char(t.inserted_at, 'YYYY-MM-DD\"T\"HH24:MI:SS'),"
    " coalesce((select jsonb_object_agg(e.type, e.settings) from _realtime.extensions e"
    "           where e.tenant_external_id = t.external_id), '{}'::jsonb)"
    " from _realtime.tenants t")


class TenantStore:
    def __init__(self, dsn: str, crypto: Crypto) -> None:
        self.dsn = dsn
        self.crypto = crypto

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=10,
                                                     application_name="realtime_channels_tenants")

    async def migrate(self) -> None:
        async with await self._connect() as conn:
            async with conn.transaction():
                await conn.execute("select pg_catalog.pg_advisory_xact_lock(%s)", (_LOCK,))
                await conn.execute("create schema if not exists _realtime")
                await conn.execute("create table if not exists _realtime.rc_schema_migrations"
                                   " (version integer primary key, applied_at timestamptz not null default now())")
                cur = await conn.execute("select coalesce(max(version), 0) from _realtime.rc_schema_migrations")
                row = await cur.fetchone()
                done = int(row[0]) if row else 0
                for version, statements in enumerate(_MIGRATIONS, start=1):
                    if version <= done:
                        continue
                    await conn.execute(statements)
                    await conn.execute("insert into _realtime.rc_schema_migrations (version) values (%s)", (version,))
                    log.info("tenants: _realtime schema migrated to version %d", version)

    async def list(self) -> list[Tenant]:
        async with await self._connect() as conn:
            cur = await conn.execute(_SELECT + " order by t.inserted_at, t.external_id")
            return [self._tenant(row) for row in await cur.fetchall()]

    async def get(self, external_id: str) -> Tenant | None:
        async with await self._connect() as conn:
            cur = await conn.execute(_SELECT + " where t.external_id = %s", (external_id,))
            row = await cur.fetchone()
            return self._tenant(row) if row is not None else None

    async def put(self, tenant: Tenant) -> tuple[Tenant, bool]:
        """Create or replace ``tenant`` (its extensions replaced as a whole); True when created.
        One transaction: nothing half-written."""
        limits = [tenant.limits.get(c) for c in _COLUMNS]
        secret = self.crypto.encrypt(tenant.jwt_secret) if tenant.jwt_secret else None
        async with await self._connect() as conn:
            async with conn.transaction():
                cur = await conn.execute(
                    "insert into _realtime.tenants (external_id, name, jwt_secret, jwt_jwks, "
                    + ", ".join(_COLUMNS) + ", suspend, private_only, presence_enabled)"
                    " values (%s, %s, %s, %s, " + ", ".join(["%s"] * len(_COLUMNS)) + ", %s, %s, %s)"
                    " on conflict (external_id) do update set name = excluded.name,"
                    " jwt_secret = excluded.jwt_secret, jwt_jwks = excluded.jwt_jwks, "
                    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS)
                    + ", suspend = excluded.suspend, private_only = excluded.private_only,"
                    " presence_enabled = excluded.presence_enabled, updated_at = now() at time zone 'utc'"
                    " returning (xmax = 0)",
                    (tenant.external_id, tenant.name, secret, Jsonb(tenant.jwt_jwks) if tenant.jwt_jwks else None,
                     *limits, tenant.suspend, tenant.private_only, tenant.presence_enabled))
                row = await cur.fetchone()
                created = bool(row and row[0])
                await conn.execute("delete from _realtime.extensions where tenant_external_id = %s",
                                   (tenant.external_id,))
                for kind, settings in tenant.extensions.items():
                    stored = {k: (self.crypto.encrypt(str(v)) if k in ENCRYPTED and v is not None else v)
                              for k, v in settings.items()}
                    await conn.execute("insert into _realtime.extensions (type, settings, tenant_external_id)"
                                       " values (%s, %s, %s)", (kind, Jsonb(stored), tenant.external_id))
                await conn.execute("select pg_catalog.pg_notify(%s, %s)", (CHANNEL, tenant.external_id))
        stored_tenant = await self.get(tenant.external_id)
        assert stored_tenant is not None
        return stored_tenant, created

    async def delete(self, external_id: str) -> bool:
        async with await self._connect() as conn:
            async with conn.transaction():
                cur = await conn.execute("delete from _realtime.tenants where external_id = %s returning 1",
                                         (external_id,))
                gone = await cur.fetchone() is not None
                if gone:
                    await conn.execute("select pg_catalog.pg_notify(%s, %s)", (CHANNEL, external_id))
        return gone

    async def notify(self, external_id: str) -> None:
        async with await self._connect() as conn:
            await conn.execute("select pg_catalog.pg_notify(%s, %s)", (CHANNEL, external_id))

    async def listen(self, on_change: Callable[[str], Awaitable[None]], on_reconnect: Callable[[], Awaitable[None]]) -> None:
        """Call ``on_change(external_id)`` for every change made by any server; after a lost
        connection ``on_reconnect()`` (changes may have been missed).  Runs until cancelled."""
        delay = 0.5
        first = True
        while True:
            try:
                async with await self._connect() as conn:
                    await conn.execute(f"listen {CHANNEL}")
                    if not first:
                        await on_reconnect()
                    first, delay = False, 0.5
                    async for note in conn.notifies():
                        await on_change(note.payload)
            except (psycopg.Error, OSError) as exc:
                log.warning("tenants: change notifications interrupted (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)  # back-off before reconnecting
                delay = min(delay * 2, 10.0)

    def _tenant(self, row: Any) -> Tenant:
        tid, ext_id, name, secret, jwks, *rest = row
        limits = {c: v for c, v in zip(_COLUMNS, rest[:len(_COLUMNS)], strict=True) if v is not None}
        suspend, private_only, presence, inserted, exts = rest[len(_COLUMNS):]
        extensions: dict[str, dict[str, Any]] = {}
        for kind, settings in (exts or {}).items():
            plain = dict(settings or {})
            for key in ENCRYPTED:
                if isinstance(plain.get(key), str):
                    plain[key] = self.crypto.decrypt(plain[key])
            extensions[kind] = plain
        jwks_value: Mapping[str, Any] | None = orjson.loads(jwks) if isinstance(jwks, str) else jwks
        return Tenant(external_id=ext_id, name=name or ext_id,
                      jwt_secret=self.crypto.decrypt(secret) if secret else None, jwt_jwks=jwks_value,
                      limits={k: int(v) for k, v in limits.items() if k in LIMITS}, suspend=bool(suspend),
                      private_only=bool(private_only), presence_enabled=bool(presence), extensions=extensions,
                      id=tid, inserted_at=inserted)
