"""A tenant: Supabase Realtime's tenant fields, validated and rendered as its admin API does
(sans-I/O; docs/tenants.md).

``parse`` turns a request's ``tenant`` object into field values or Supabase-style field errors
(``{"field": ["can't be blank"]}``, answered 422); ``render`` is the API's view of a tenant (the
database password left out); ``settings_for`` is the server configuration the tenant runs with:
the process's settings with the tenant's secret, limits, flags and database in place.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["LIMITS", "Tenant", "parse", "render", "settings_for", "tenant_of_host"]

#: integer limits, Supabase's names, which are also our settings' names
LIMITS = ("max_concurrent_users", "max_events_per_second", "max_bytes_per_second", "max_channels_per_client",
          "max_joins_per_second", "max_presence_events_per_second", "max_payload_size_in_kb",
          "max_client_presence_events_per_window", "client_presence_window_ms")
FLAGS = ("suspend", "private_only", "presence_enabled")
POSTGRES_TYPES = ("postgres_cdc_rls", "postgres")
#: extension settings Supabase encrypts (and we store encrypted too)
ENCRYPTED = ("db_host", "db_port", "db_name", "db_user", "db_password")
POSTGRES_REQUIRED = ("region", *ENCRYPTED)
POSTGRES_DEFAULTS: Mapping[str, Any] = {"publication": "supabase_realtime", "slot_name": "supabase_realtime_replication_slot",
                                        "poll_interval_ms": 100, "poll_max_changes": 100,
                                        "poll_max_record_bytes": 1_048_576}
BLANK = "can't be blank"
INVALID = "is invalid"


@dataclass(frozen=True, slots=True)
class Tenant:
    external_id: str
    name: str
    jwt_secret: str | None = None  # plaintext in memory; encrypted at rest
    jwt_jwks: Mapping[str, Any] | None = None
    limits: Mapping[str, int] = field(default_factory=dict)  # only those given; the rest default
    suspend: bool = False
    private_only: bool = False
    presence_enabled: bool = False
    #: extension type → settings (plaintext in memory), e.g. ``{"postgres_cdc_rls": {...}}``
    extensions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    id: str | None = None
    inserted_at: str | None = None

    @property
    def postgres(self) -> Mapping[str, Any] | None:
        for kind in POSTGRES_TYPES:
            if kind in self.extensions:
                return self.extensions[kind]
        return None

    def database_url(self) -> str | None:
        pg = self.postgres
        if pg is None:
            return None
        user = urllib.parse.quote(str(pg["db_user"]), safe="")
        password = urllib.parse.quote(str(pg["db_password"]), safe="")
        return (f"postgresql://{user}:{password}@{pg['db_host']}:{pg['db_port']}/"
                f"{urllib.parse.quote(str(pg['db_name']), safe='')}")


def parse(params: Any, *, external_id: str | None = None, current: Tenant | None = None
          ) -> tuple[Tenant | None, dict[str, list[str]]]:
    """A create (``current`` None) or an update of ``current`` from the API's ``tenant`` object."""
    errors: dict[str, list[str]] = {}
    if not isinstance(params, Mapping):
        return None, {"tenant": [BLANK]}
    ext_id = external_id or params.get("external_id") or (current.external_id if current else None)
    if not isinstance(ext_id, str) or not ext_id:
        errors["external_id"] = [BLANK]
    elif len(ext_id) > 255 or "." in ext_id or "/" in ext_id:
        errors["external_id"] = [INVALID]
    base = current or Tenant(external_id=str(ext_id or ""), name=str(ext_id or ""))
    updates: dict[str, Any] = {}
    name = params.get("name")
    if name is not None:
        if not isinstance(name, str) or len(name) > 255:
            errors["name"] = [INVALID]
        else:
            updates["name"] = name
    if "jwt_secret" in params:
        secret = params["jwt_secret"]
        if secret is not None and (not isinstance(secret, str) or not secret):
            errors["jwt_secret"] = [INVALID]
        else:
            updates["jwt_secret"] = secret
    if "jwt_jwks" in params:
        jwks = params["jwt_jwks"]
        if jwks is not None and not (isinstance(jwks, Mapping) and isinstance(jwks.get("keys"), list)):
            errors["jwt_jwks"] = [INVALID]
        else:
            updates["jwt_jwks"] = jwks
    limits = dict(base.limits)
    for key in LIMITS:
        if key in params and params[key] is not None:
            value = params[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                errors[key] = [INVALID]
            else:
                limits[key] = value
    updates["limits"] = limits
    for key in FLAGS:
        if key in params and params[key] is not None:
            if not isinstance(params[key], bool):
                errors[key] = [INVALID]
            else:
                updates[key] = params[key]
    if "extensions" in params:
        exts, problems = _extensions(params["extensions"])
        if problems:
            errors["extensions"] = problems
        else:
            updates["extensions"] = exts
    elif current is None:
        errors["extensions"] = [BLANK]
    tenant = replace(base, external_id=str(ext_id or ""), **updates)
    if tenant.jwt_secret is None and tenant.jwt_jwks is None and "jwt_secret" not in errors and "jwt_jwks" not in errors:
        errors["jwt_secret"] = ["either jwt_secret or jwt_jwks must be provided"]
    return (None, errors) if errors else (tenant, {})


def _extensions(raw: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    if not isinstance(raw, list):
        return {}, [INVALID]
    out: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for entry in raw:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str) \
                or not isinstance(entry.get("settings"), Mapping):
            problems.append("type and settings are required")
            continue
        kind = "postgres_cdc_rls" if entry["type"] == "postgres" else entry["type"]
        settings = dict(entry["settings"])
        if kind == "postgres_cdc_rls":
            settings = {**POSTGRES_DEFAULTS, **settings}
            for key in POSTGRES_REQUIRED:
                value = settings.get(key)
                if value is None or value == "":
                    problems.append(f"{key} can't be blank")
                elif not isinstance(value, str):
                    problems.append(f"{key} is invalid")
        out[kind] = settings
    return out, problems


def render(tenant: Tenant) -> dict[str, Any]:
    """The admin API's view of a tenant (Supabase's fields; the database password dropped)."""
    out: dict[str, Any] = {"id": tenant.id, "external_id": tenant.external_id, "name": tenant.name}
    for key in ("max_concurrent_users", "max_channels_per_client", "max_events_per_second", "max_joins_per_second",
                "max_client_presence_events_per_window", "client_presence_window_ms"):
        out[key] = tenant.limits.get(key)
    out["inserted_at"] = tenant.inserted_at
    out["extensions"] = [{"type": kind, "settings": {k: v for k, v in settings.items() if k != "db_password"}}
                         for kind, settings in tenant.extensions.items()]
    out["private_only"] = tenant.private_only
    out["presence_enabled"] = tenant.presence_enabled
    out["suspend"] = tenant.suspend
    return out


def tenant_of_host(host: str | None) -> str:
    """Supabase's rule: the first label of the Host header, without its port."""
    name = (host or "").strip()
    if name.startswith("["):  # an IPv6 literal has no tenant label
        return name
    return name.split(":", 1)[0].split(".", 1)[0].lower()


def settings_for(base: Settings, tenant: Tenant) -> Settings:
    """What a tenant's node runs with: its limits and flags over the process's defaults, its JWT
    secret or key set, its database (or none), and a slot of its own."""
    pg = tenant.postgres
    update: dict[str, Any] = {**tenant.limits, "private_only": tenant.private_only,
                              "self_host_tenant_name": tenant.external_id,
                              "presence_enabled": tenant.presence_enabled,
                              "jwt_secret": tenant.jwt_secret, "allow_dev_secret": False,
                              "jwt_jwks": orjson.dumps(tenant.jwt_jwks).decode() if tenant.jwt_jwks else None,
                              "database_url": tenant.database_url()}
    if pg is not None:
        update["publication"] = str(pg.get("publication") or base.publication)
        # slots of our own per tenant (tenants may share a database; Supabase's slot_name names
        # a wal2json slot of its own design, which ours must not collide with)
        suffix = _identifier(tenant.external_id)
        update["slot_name"] = f"{base.slot_name}_{suffix}"[:63]
        update["messages_slot_name"] = f"{base.messages_slot_name}_{suffix}"[:63]
    return base.model_copy(update=update)


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in text.lower()) or "tenant"
