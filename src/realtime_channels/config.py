"""Settings: every ``REALTIME_*`` variable, read once (the README's configuration table lists them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from urllib.parse import quote

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Used when neither REALTIME_JWT_SECRET nor REALTIME_JWT_JWKS is set.  Printed with a warning:
#: anyone who reads this file can mint tokens for a server running on it.
DEV_JWT_SECRET = "realtime-channels-development-secret-not-for-production"

if TYPE_CHECKING:
    from .pubsub.retention import RetentionLimits
    from .cdc.retention import ChangeRetention

LogLevel = Literal["debug", "info", "warning", "error"]

#: Variables of Supabase's self-host ``realtime`` service (its docker-compose ``environment:``
#: block and ``config/runtime.exs``) that mean nothing to this server: accepted so that block can
#: be used as it is, and named once at start-up (debug level).  Each with the reason.
IGNORED_SUPABASE_VARIABLES: dict[str, str] = {
    "SECRET_KEY_BASE": "signs Phoenix sessions; this server has none",
    "ERL_AFLAGS": "Erlang VM flags",
    "DNS_NODES": "Erlang cluster discovery; nodes meet through REALTIME_REDIS_URL here",
    "CLUSTER_STRATEGIES": "Erlang cluster discovery; nodes meet through REALTIME_REDIS_URL here",
    "RLIMIT_NOFILE": "the server raises its descriptor limit to the hard limit itself",
    "ENABLE_TAILSCALE": "a feature of Supabase's container image",
    "APP_NAME": "names Erlang cluster nodes",
    "RUN_JANITOR": "realtime.messages partitions are created and dropped by every server on its own",
    "DISABLE_HEALTHCHECK_LOGGING": "this server does not log requests, health checks included",
    "DB_POOL_SIZE": "connections are opened as needed",
    "DB_IP_VERSION": "the host's address family is the resolver's choice",
}


def is_loopback(host: str) -> bool:
    """``host`` names only this machine (127.0.0.0/8, ::1 or ``localhost``)."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


#: Supabase's defaults for the database parts that are not set (its ``config/runtime.exs``):
#: host, port, user, password, database name
DB_DEFAULTS: tuple[str, int, str, str, str] = ("127.0.0.1", 5432, "supabase_admin", "postgres", "postgres")


def database_url_of(host: str | None, port: int | None, user: str | None, password: str | None,
                    name: str | None) -> str:
    """A ``postgresql://`` URL from Supabase's separate ``DB_*`` parts (defaults: DB_DEFAULTS)."""
    d_host, d_port, d_user, d_password, d_name = DB_DEFAULTS
    host = host or d_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    user_part = quote(user or d_user, safe="")
    password_part = quote(password if password is not None else d_password, safe="")
    return f"postgresql://{user_part}:{password_part}@{host}:{port or d_port}/{quote(name or d_name, safe='')}"


def ignored_supabase_variables(environ: Mapping[str, str]) -> list[str]:
    """The variables of ``IGNORED_SUPABASE_VARIABLES`` that are set, in that table's order."""
    return [name for name in IGNORED_SUPABASE_VARIABLES if name in environ]


class Settings(BaseSettings):
    """Server configuration. CLI flags override the environment (see ``cli.py``)."""

    #: ``populate_by_name``: CLI flags and tests pass settings by field name even where the
    #: environment also accepts Supabase's names (``validation_alias``; the ``REALTIME_*`` name is
    #: listed first and wins when both are set)
    model_config = SettingsConfigDict(env_prefix="REALTIME_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(4000, ge=0, le=65535, validation_alias=AliasChoices("REALTIME_PORT", "PORT"))
    jwt_secret: str | None = Field(None, validation_alias=AliasChoices("REALTIME_JWT_SECRET", "API_JWT_SECRET"))
    jwt_jwks: str | None = Field(None, description="JWKS as JSON text, a file path or an http(s) URL",
                                 validation_alias=AliasChoices("REALTIME_JWT_JWKS", "API_JWT_JWKS"))
    #: the development secret is refused on an address other than loopback unless this is set
    allow_dev_secret: bool = False
    log_level: LogLevel = "info"
    log_format: Literal["text", "json"] = "text"

    # postgres_changes (protocol.md §6): enabled by a database URL
    database_url: str | None = Field(None, description="PostgreSQL URL; enables postgres_changes")
    #: Supabase's way of naming the database: the parts build ``database_url`` when it is unset
    #: (any one of them set is enough; the others take Supabase's defaults, see DB_DEFAULTS)
    db_host: str | None = Field(None, validation_alias=AliasChoices("REALTIME_DB_HOST", "DB_HOST"))
    db_port: int | None = Field(None, ge=1, le=65535, validation_alias=AliasChoices("REALTIME_DB_PORT", "DB_PORT"))
    db_user: str | None = Field(None, validation_alias=AliasChoices("REALTIME_DB_USER", "DB_USER"))
    db_password: str | None = Field(None, repr=False,
                                    validation_alias=AliasChoices("REALTIME_DB_PASSWORD", "DB_PASSWORD"))
    db_name: str | None = Field(None, validation_alias=AliasChoices("REALTIME_DB_NAME", "DB_NAME"))
    #: Supabase runs it on the connections to its own tenant store only (never on a tenant's
    #: database); kept for that store, run on no connection to the tenant's database here
    db_after_connect_query: str | None = Field(
        None, validation_alias=AliasChoices("REALTIME_DB_AFTER_CONNECT_QUERY", "DB_AFTER_CONNECT_QUERY"))
    #: encrypts tenants' JWT secrets and database settings in the tenant store, as Supabase does
    db_enc_key: str | None = Field(None, repr=False,
                                   validation_alias=AliasChoices("REALTIME_DB_ENC_KEY", "DB_ENC_KEY"))
    publication: str = Field("supabase_realtime", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    slot_name: str = Field("realtime_channels", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    #: "per_subscriber" reproduces Supabase's one-query-per-subscriber RLS check; it exists
    #: only so bench/ can compare against it in the same run.
    cdc_rls_mode: Literal["batched", "per_subscriber"] = "batched"

    # scale-out (several processes / machines share channels through Redis)
    redis_url: str | None = Field(None, description="Redis URL; switches the backbone to Redis")
    #: REALTIME_REDIS_URL names a node of a Redis Cluster (Redis 7): sharded pub/sub over its shards
    redis_cluster: bool = False
    workers: int = Field(1, ge=1, le=64)
    #: set for the worker processes started by --workers (they share the port)
    reuse_port: bool = False
    websocket_engine: Literal["direct", "aiohttp"] = "direct"

    # functions triggered by realtime events (README "Functions")
    functions_config: str | None = Field(None, description="path of the functions TOML file")
    #: Standard Webhooks signing secret, ``whsec_<base64>``
    functions_secret: str | None = None
    #: sent as ``Authorization: Bearer`` to HTTP functions (e.g. a Supabase service_role key)
    functions_service_role_key: str | None = None

    # pacing of refusals (protocol.md §1.4, §3.3)
    join_error_backoff_ms: int = Field(5000, ge=0, validation_alias=AliasChoices(
        "REALTIME_JOIN_ERROR_BACKOFF_MS", "CHANNEL_ERROR_BACKOFF_MS"))
    connect_error_backoff_ms: int = Field(2000, ge=0, validation_alias=AliasChoices(
        "REALTIME_CONNECT_ERROR_BACKOFF_MS", "CONNECT_ERROR_BACKOFF_MS"))

    # connection lifecycle (protocol.md §2.2, §2.3)
    idle_timeout_ms: int = Field(60_000, gt=0)
    #: a connection that has not sent a complete request's headers this long after connecting
    #: is closed (slow-request attacks hold descriptors otherwise); a REST body gets as long
    handshake_timeout_ms: int = Field(10_000, gt=0)
    max_frame_bytes: int = Field(5_000_000, gt=0)
    outbox_max_bytes: int = Field(8 * 1024 * 1024, gt=0)
    #: a presence track that would make its topic's state larger is refused
    max_presence_state_bytes: int = Field(16 * 1024 * 1024, gt=0)
    #: joins and leaves of a topic within this many ms go out as one presence_diff; 0: one each
    presence_coalesce_ms: int = Field(30, ge=0)
    #: a presence push over REALTIME_MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW: "shutdown" (Supabase)
    #: or "coalesce" (accepted; the latest one applied when the window opens)
    presence_over_limit: Literal["shutdown", "coalesce"] = "shutdown"

    # limits (protocol.md §8); names follow Supabase's tenant fields, and Supabase's variables
    # for the defaults of new tenants are accepted too
    max_payload_size_in_kb: int = Field(3000, gt=0)
    max_channels_per_client: int = Field(100, gt=0, validation_alias=AliasChoices(
        "REALTIME_MAX_CHANNELS_PER_CLIENT", "TENANT_MAX_CHANNELS_PER_CLIENT"))
    max_client_presence_events_per_window: int = Field(5, gt=0, validation_alias=AliasChoices(
        "REALTIME_MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW", "CLIENT_PRESENCE_MAX_CALLS"))
    client_presence_window_ms: int = Field(30_000, gt=0, validation_alias=AliasChoices(
        "REALTIME_CLIENT_PRESENCE_WINDOW_MS", "CLIENT_PRESENCE_WINDOW_MS"))
    max_events_per_second: int = Field(100, gt=0, validation_alias=AliasChoices(
        "REALTIME_MAX_EVENTS_PER_SECOND", "TENANT_MAX_EVENTS_PER_SECOND"))
    max_concurrent_users: int = Field(200, gt=0, validation_alias=AliasChoices(
        "REALTIME_MAX_CONCURRENT_USERS", "TENANT_MAX_CONCURRENT_USERS"))
    max_joins_per_second: int = Field(100, gt=0, validation_alias=AliasChoices(
        "REALTIME_MAX_JOINS_PER_SECOND", "TENANT_MAX_JOINS_PER_SECOND"))
    max_presence_events_per_second: int = Field(1000, gt=0)
    #: inbound frames one socket may send per second (burst as large); beyond it the socket is
    #: read more slowly (TCP back-pressure), never cut off — our protection, not Supabase's
    max_client_frames_per_second: int = Field(5000, gt=0)
    #: stored like Supabase's tenant field, and like Supabase not enforced (protocol.md §8)
    max_bytes_per_second: int = Field(100_000, gt=0, validation_alias=AliasChoices(
        "REALTIME_MAX_BYTES_PER_SECOND", "TENANT_MAX_BYTES_PER_SECOND"))
    presence_enabled: bool = False
    private_only: bool = False
    #: open sockets one client address may hold on one server process; 0 = no cap (ours)
    max_connections_per_address: int = Field(0, ge=0)
    #: a header the proxy in front sets to the client's address (e.g. X-Forwarded-For; its last
    #: entry is used); unset: the TCP peer address
    client_address_header: str | None = None

    # private channels, database broadcast and replay (protocol.md §4.7, §4.8, §7.3)
    messages_publication: str = Field("supabase_realtime_messages_publication", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    messages_slot_name: str = Field("realtime_channels_messages", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    messages_retention_days: int = Field(3, gt=0)
    #: install auth.uid()/auth.role()/auth.jwt() on a plain PostgreSQL without Supabase's auth schema
    install_auth_helpers: bool = False

    # broadcast offsets and resume (protocol.md §4.10)
    #: how long broadcasts (and postgres changes) are retained for resume; 0 turns resume off
    resume_window_s: float = Field(120, ge=0)
    #: retained broadcasts per stream (topic, public or private)
    resume_max_messages: int = Field(1000, gt=0)
    #: retained broadcast bytes on one node, all streams together (memory backbone, and a Redis
    #: node's local offsets while Redis is away); the least recently used stream gives way first
    resume_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    #: retained postgres changes on one node, all tables together
    resume_max_changes: int = Field(100_000, gt=0)
    #: rows a ``snapshot: true`` binding may read at its join (protocol.md §6.10)
    snapshot_max_rows: int = Field(10_000, gt=0)

    # tenants in a database (docs/tenants.md); unset: the environment defines the one tenant
    tenants_database_url: str | None = Field(None, repr=False)
    #: AES-256-GCM values (``g1:``) a Supabase server may have written to the tenant store
    db_enc_key_gcm: str | None = Field(None, repr=False,
                                       validation_alias=AliasChoices("REALTIME_DB_ENC_KEY_GCM", "DB_ENC_KEY_GCM"))

    # /metrics (docs/metrics.md): a bearer JWT signed with this secret; unset: loopback clients only
    metrics_jwt_secret: str | None = Field(
        None, validation_alias=AliasChoices("REALTIME_METRICS_JWT_SECRET", "METRICS_JWT_SECRET"))

    # channel tokens are re-verified at min(exp, now + this) (protocol.md §3.9)
    token_recheck_ms: int = Field(300_000, gt=0)

    # the tenant API (/api/tenants/...) and the one tenant the environment defines
    #: a bearer JWT signed with it may call /api/tenants/...; unset: the tenant's own keys may
    api_jwt_secret: str | None = Field(
        None, repr=False, validation_alias=AliasChoices("REALTIME_API_JWT_SECRET", "API_JWT_SECRET"))
    self_host_tenant_name: str = Field(
        "realtime-dev", min_length=1,
        validation_alias=AliasChoices("REALTIME_SELF_HOST_TENANT_NAME", "SELF_HOST_TENANT_NAME"))
    #: with tenants in a database, create or update the self-host tenant from the environment at
    #: start; without a store the environment always defines the tenant
    seed_self_host: bool = Field(False, validation_alias=AliasChoices("REALTIME_SEED_SELF_HOST", "SEED_SELF_HOST"))
    region: str | None = Field(None, validation_alias=AliasChoices("REALTIME_REGION", "REGION"))

    @model_validator(mode="after")
    def _database_from_parts(self) -> Settings:
        """``DB_HOST``/``DB_PORT``/``DB_USER``/``DB_PASSWORD``/``DB_NAME`` (Supabase's names) build
        the database URL when none is given; user, password and name are URL-quoted."""
        parts = (self.db_host, self.db_port, self.db_user, self.db_password, self.db_name)
        if self.database_url is None and any(p is not None for p in parts):
            self.database_url = database_url_of(self.db_host, self.db_port, self.db_user,
                                                self.db_password, self.db_name)
        return self

    @property
    def dev_secret_in_use(self) -> bool:
        return self.jwt_secret is None and self.jwt_jwks is None

    @property
    def dev_secret_exposed(self) -> bool:
        """The development secret would serve an address reachable from other machines."""
        return self.dev_secret_in_use and not is_loopback(self.host)

    @property
    def effective_jwt_secret(self) -> str | None:
        if self.dev_secret_in_use:
            return DEV_JWT_SECRET
        return self.jwt_secret

    @property
    def resume_limits(self) -> RetentionLimits:
        from .pubsub.retention import RetentionLimits

        return RetentionLimits(self.resume_window_s, self.resume_max_messages, self.resume_max_bytes)

    def change_retention(self) -> ChangeRetention | None:
        """Postgres changes kept for resume (§4.10); ``None`` with resume off."""
        import time

        from .cdc.retention import ChangeRetention

        if self.resume_window_s <= 0:
            return None
        return ChangeRetention(self.resume_window_s, self.resume_max_changes, time.time)

    @property
    def max_payload_bytes(self) -> int:
        """protocol.md §4.5: ``max_payload_size_in_kb × 1000 + 500``."""
        return self.max_payload_size_in_kb * 1000 + 500
