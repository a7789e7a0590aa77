"""``doctor``'s checks: pure functions from facts to :class:`Result`, each verdict with its fix,
so every rule can be read and tested on its own (the facts are gathered in ``database`` and the
package's runner)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit, urlunsplit

from ..config import Settings, is_loopback

#: the tenant the environment defines (without REALTIME_TENANTS_DATABASE_URL, docs/tenants.md)
DEFAULT_TENANT = "environment"
CLIENT_ROLES = ("anon", "authenticated", "service_role")
MIN_SECRET_CHARS = 32
#: a slot whose lag exceeds this share of ``max_slot_wal_keep_size`` is about to be lost
LAG_LIMIT = 0.8
MIN_REDIS_MAJOR = 7
TIMEOUT_S = 5
NO_DATABASE = "skipped: no database connection"
MARKS = {"ok": "✓", "fail": "✗", "warn": "!", "skip": "-"}
NEW_SECRET = "export REALTIME_JWT_SECRET=\"$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')\""


@dataclass(frozen=True)
class Result:
    check: str  # a stable id, for --json readers
    status: str  # ok, fail, warn, skip
    what: str
    why: str = ""
    fix: str = ""

    def lines(self) -> list[str]:
        head = f"{MARKS[self.status]} {self.what}" + (f": {self.why}" if self.why else "")
        return [head] + ([f"  fix: {self.fix}"] if self.fix else [])


def ok(check: str, what: str) -> Result:
    return Result(check, "ok", what)


def fail(check: str, what: str, why: str, fix: str = "") -> Result:
    return Result(check, "fail", what, why, fix)


def warn(check: str, what: str, why: str, fix: str = "") -> Result:
    return Result(check, "warn", what, why, fix)


@dataclass(frozen=True)
class Target:
    """What one run checks: one tenant's database, JWT settings and Redis."""

    tenant: str
    database_url: str | None
    publication: str
    slots: tuple[str, ...]
    jwt_secret: str | None
    jwt_jwks: str | None
    host: str
    redis_url: str | None

    @classmethod
    def from_settings(cls, settings: Settings, tenant: str = DEFAULT_TENANT) -> Target:
        return cls(tenant, settings.database_url, settings.publication,
                   (settings.slot_name, settings.messages_slot_name), settings.jwt_secret,
                   settings.jwt_jwks, settings.host, settings.redis_url)


def ident(name: str) -> str:
    """``name`` as an SQL identifier, quoted only when it must be."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    return f"{ident(schema)}.{ident(table)}"


def redact(url: str, mask: str | None = "***") -> str:
    """A URL with its password masked, or left out with ``mask=None`` (for a command to run: it
    asks for the password); doctor's output is pasted into tickets."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = (parts.username or "") + (f":{mask}" if mask is not None else "")
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# --- pure checks: facts in, verdicts out -----------------------------------------------------


def check_wal_level(value: str) -> Result:
    if value == "logical":
        return ok("wal_level", "wal_level is logical")
    return fail("wal_level", "wal_level", f"is {value}, logical decoding needs logical",
                "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL (read only at start)")


def check_replication(role: str, superuser: bool, replication: bool) -> Result:
    if superuser or replication:
        return ok("replication", f"role {role} may replicate ({'superuser' if superuser else 'REPLICATION'})")
    return fail("replication", f"role {role}", "has no REPLICATION: it cannot open the replication stream",
                f"ALTER ROLE {ident(role)} WITH REPLICATION;")


def check_publication(name: str, exists: bool, tables: Sequence[str]) -> Result:
    add = f"ALTER PUBLICATION {ident(name)} ADD TABLE public.<table>;"
    if not exists:
        return fail("publication", f"publication {name}", "does not exist: no table can be subscribed",
                    f"CREATE PUBLICATION {ident(name)};  -- then: {add}")
    if not tables:
        return warn("publication", f"publication {name}", "holds no tables: postgres_changes has nothing to send",
                    add)
    return ok("publication", f"publication {name} holds {', '.join(tables)}")


@dataclass(frozen=True)
class TableFacts:
    schema: str
    table: str
    replica_identity: str  # pg_class.relreplident: d, n, f, i
    has_primary_key: bool
    has_id_column: bool


def check_tables(tables: Sequence[TableFacts], publishes_update_or_delete: bool) -> list[Result]:
    results: list[Result] = []
    for t in tables:
        name = qualified(t.schema, t.table)
        without_identity = t.replica_identity == "n" or (t.replica_identity == "d" and not t.has_primary_key)
        if publishes_update_or_delete and without_identity:
            kind = "NOTHING" if t.replica_identity == "n" else "DEFAULT without a primary key"
            results.append(fail("replica_identity", f"replica identity of {name}",
                                f"is {kind}: PostgreSQL refuses its UPDATEs and DELETEs while they are published",
                                f"ALTER TABLE {name} REPLICA IDENTITY FULL;  -- or add a primary key"))
        if not t.has_primary_key:
            pk = ("ADD PRIMARY KEY (id)" if t.has_id_column
                  else "ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
            results.append(fail("primary_key", f"primary key of {name}",
                                "missing: postgres_changes sends its changes as errors (no primary key)",
                                f"ALTER TABLE {name} {pk};"))
    if not results and tables:
        results.append(ok("replica_identity", f"{len(tables)} published table(s) have a primary key and a replica identity"))
    return results


@dataclass(frozen=True)
class SlotFacts:
    database: str | None
    plugin: str | None
    wal_status: str | None
    active: bool
    lag_bytes: float | None


def mb(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def check_slot(name: str, slot: SlotFacts | None, database: str, keep_size_mb: int) -> Result:
    """``keep_size_mb``: ``max_slot_wal_keep_size`` in MB, -1 for unlimited."""
    what = f"replication slot {name}"
    drop = f"SELECT pg_drop_replication_slot('{name}');"
    if slot is None:
        return warn("slot", what, "does not exist yet (the server creates it at its first start)",
                    "realtime-channels serve")
    if slot.database != database or slot.plugin != "pgoutput":
        return fail("slot", what, f"belongs to database {slot.database} with plugin {slot.plugin}, not to "
                    f"{database} with pgoutput", f"{drop}  -- or give this deployment its own REALTIME_SLOT_NAME")
    if slot.wal_status == "lost":
        return fail("slot", what, "wal_status is lost: the WAL it needs was removed",
                    f"{drop}  -- the server creates it again at its next start; the lost changes are gone")
    limit = "unlimited" if keep_size_mb < 0 else f"{keep_size_mb:.1f} MB"
    lag = "unknown" if slot.lag_bytes is None else mb(slot.lag_bytes)
    figures = f"lag {lag} of max_slot_wal_keep_size {limit}"
    if slot.lag_bytes is not None and keep_size_mb >= 0 and slot.lag_bytes > LAG_LIMIT * keep_size_mb * 1024 * 1024:
        return fail("slot", what, f"{figures}: over {LAG_LIMIT:.0%} — PostgreSQL will soon drop the WAL it needs",
                    f"start the server so it reads the slot, or if nothing will: {drop}")
    reader = "read by a server" if slot.active else "no server reading it"
    if slot.wal_status == "unreserved":
        return warn("slot", what, f"wal_status is unreserved ({figures}): its WAL is about to be removed",
                    f"start the server so it reads the slot, or if nothing will: {drop}")
    return ok("slot", f"{what}: wal_status {slot.wal_status}, {figures}, {reader}")


def check_keep_size(keep_size_mb: int) -> Result | None:
    if keep_size_mb >= 0:
        return None
    return warn("max_slot_wal_keep_size", "max_slot_wal_keep_size", "is -1: a slot nobody reads keeps WAL until the disk is full",
                "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf();")


def check_roles(login: str, roles: dict[str, bool], member_of: Iterable[str]) -> list[Result]:
    """``roles``: the client roles that exist, each with its BYPASSRLS; ``member_of``: those the
    login role may switch to."""
    results = []
    missing = [r for r in CLIENT_ROLES if r not in roles]
    if missing:
        results.append(fail("roles", "client roles", f"missing {', '.join(missing)}: tokens naming them are refused",
                            " ".join(f"CREATE ROLE {r} NOLOGIN NOINHERIT{' BYPASSRLS' if r == 'service_role' else ''};"
                                     for r in missing)))
    if roles.get("service_role") is False:
        results.append(fail("roles", "role service_role", "has no BYPASSRLS: it sees only what RLS lets it",
                            "ALTER ROLE service_role WITH BYPASSRLS;"))
    if not results:
        results.append(ok("roles", f"client roles {', '.join(CLIENT_ROLES)} exist, service_role has BYPASSRLS"))
    members = set(member_of)
    cannot = [r for r in CLIENT_ROLES if r in roles and r not in members]
    if cannot:
        results.append(fail("membership", f"role {login}", f"cannot switch to {', '.join(cannot)} (RLS is checked as "
                            "the token's role)", f"GRANT {', '.join(cannot)} TO {ident(login)};"))
    return results


def check_grants(no_usage: dict[str, list[str]], no_select: dict[str, list[str]]) -> Result:
    """Schema → roles without USAGE; table → roles without SELECT."""
    if not no_usage and not no_select:
        return ok("grants", "client roles have USAGE on the schemas and SELECT on the published tables")
    whys = [f"{', '.join(roles)} lack USAGE on schema {s}" for s, roles in no_usage.items()]
    whys += [f"{', '.join(roles)} lack SELECT on {t}" for t, roles in no_select.items()]
    fixes = [f"GRANT USAGE ON SCHEMA {ident(s)} TO {', '.join(roles)};" for s, roles in no_usage.items()]
    fixes += [f"GRANT SELECT ON {t} TO {', '.join(roles)};" for t, roles in no_select.items()]
    return fail("grants", "grants to client roles", "; ".join(whys), " ".join(fixes))


def check_create_schema(login: str, database: str, schema_exists: bool, can_create: bool) -> Result | None:
    """At its first start the server creates the schema ``realtime``; it needs CREATE for that."""
    if schema_exists or can_create:
        return None
    return fail("create_schema", f"role {login}", f"cannot create the schema realtime in database {database} "
                "(the server does at its first start)", f"GRANT CREATE ON DATABASE {ident(database)} TO {ident(login)};")


def check_messages(exists: bool, rls: bool, policies: int) -> Result:
    what = "realtime.messages (private channels)"
    if not exists:
        return warn("messages", what, "not created yet (the server creates it at its first start)",
                    "realtime-channels serve")
    if not rls:
        return fail("messages", what, "row level security is off: every token may join every private channel",
                    "ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;")
    if policies == 0:
        return warn("messages", what, "RLS on, no policies: private channels are refused for everyone",
                    "CREATE POLICY \"authenticated read\" ON realtime.messages FOR SELECT TO authenticated "
                    "USING (true);  -- the example admits every signed-in user; docs/postgres.md has per-room ones")
    return ok("messages", f"{what}: RLS on, {policies} polic{'y' if policies == 1 else 'ies'}")


def check_jwt(secret: str | None, jwks: str | None, host: str, jwks_problem: str | None = None,
              jwks_keys: int = 0) -> list[Result]:
    """``jwks_problem``: why the configured JWKS could not be loaded (None: it loaded)."""
    if secret is None and jwks is None:
        if not is_loopback(host):
            return [fail("jwt", "JWT secret", f"the built-in development secret on {host}: anyone can mint tokens "
                         "for this server", NEW_SECRET)]
        return [warn("jwt", "JWT secret", "the built-in development secret (accepted on loopback only)", NEW_SECRET)]
    results = []
    if secret is not None:
        if len(secret) < MIN_SECRET_CHARS:
            results.append(fail("jwt", "JWT secret", f"{len(secret)} characters, at least {MIN_SECRET_CHARS} needed",
                                NEW_SECRET))
        else:
            results.append(ok("jwt", f"JWT secret: {len(secret)} characters"))
    if jwks is not None:
        shown = redact(jwks) if jwks.lstrip().startswith(("http://", "https://")) else "REALTIME_JWT_JWKS"
        if jwks_problem is not None:
            fix = f"curl -fsS '{shown}'" if shown != "REALTIME_JWT_JWKS" else "correct REALTIME_JWT_JWKS"
            results.append(fail("jwks", f"JWKS {shown}", jwks_problem, fix))
        else:
            results.append(ok("jwks", f"JWKS {shown}: {jwks_keys} key(s)"))
    return results


def check_redis_version(version: str) -> Result:
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major >= MIN_REDIS_MAJOR:
        return ok("redis", f"redis answers PING, version {version}")
    return warn("redis", "redis", f"version {version}: tested with {MIN_REDIS_MAJOR} and later",
                f"upgrade Redis to {MIN_REDIS_MAJOR} or later")


# --- gatherers: read the facts (the database's are in doctor_db.py) -------------------------


def skipped(check: str, what: str) -> Result:
    return Result(check, "skip", what, NO_DATABASE)

