"""The database facts ``doctor`` checks, read from PostgreSQL's catalogs (checks 1–8 of
docs/doctor.md), and a tenant's settings read from the tenants database.

One short-lived connection with a connect and a statement timeout; every query reads catalogs
that any login role may read, so the answers are the same whatever role the server logs in as.
A query that fails anyway is reported as that check failing, and the others still run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import psycopg

from ..config import Settings
from .checks import (
    CLIENT_ROLES,
    TIMEOUT_S,
    Result,
    SlotFacts,
    TableFacts,
    Target,
    check_create_schema,
    check_grants,
    check_keep_size,
    check_messages,
    check_publication,
    check_replication,
    check_roles,
    check_slot,
    check_tables,
    check_wal_level,
    fail,
    qualified,
    redact,
    skipped,
    warn,
)

#: the checks after "database reachable", each reported as skipped without a connection
LATER_CHECKS = (("wal_level", "wal_level"), ("replication", "replication role"),
                ("publication", "publication"), ("replica_identity", "published tables"),
                ("slot", "replication slots"), ("roles", "client roles"), ("grants", "grants to client roles"),
                ("messages", "realtime.messages (private channels)"))

_LOGIN_SQL = """
select current_setting('wal_level'), current_user, r.rolsuper, r.rolreplication, current_database()
  from pg_catalog.pg_roles r where r.rolname = current_user
"""
_PUBLICATION_SQL = "select pubupdate or pubdelete from pg_catalog.pg_publication where pubname = %s"
_TABLES_SQL = """
select pt.schemaname, pt.tablename, c.relreplident,
       exists (select 1 from pg_catalog.pg_index i where i.indrelid = c.oid and i.indisprimary),
       exists (select 1 from pg_catalog.pg_attribute a
                where a.attrelid = c.oid and a.attname = 'id' and a.attnum > 0 and not a.attisdropped)
  from pg_catalog.pg_publication_tables pt
  join pg_catalog.pg_namespace n on n.nspname = pt.schemaname
  join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
 where pt.pubname = %s
 order by 1, 2
"""
_SLOT_SQL = """
select database, plugin, wal_status, active,
       case when confirmed_flush_lsn is not null and not pg_catalog.pg_is_in_recovery()
            then pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::float8 end
  from pg_catalog.pg_replication_slots where slot_name = %s
"""
_KEEP_SIZE_SQL = "select setting::int from pg_catalog.pg_settings where name = 'max_slot_wal_keep_size'"
_ROLES_SQL = """
select rolname, rolbypassrls, pg_catalog.pg_has_role(current_user, oid, 'MEMBER')
  from pg_catalog.pg_roles where rolname = any(%s)
"""
_NO_USAGE_SQL = """
select s, r from unnest(%(schemas)s::text[]) s, unnest(%(roles)s::text[]) r
 where exists (select 1 from pg_catalog.pg_namespace where nspname = s)
   and not pg_catalog.has_schema_privilege(r, s, 'USAGE')
 order by 1, 2
"""
_NO_SELECT_SQL = """
select t.schemaname, t.tablename, r
  from (select pt.schemaname, pt.tablename, c.oid
          from pg_catalog.pg_publication_tables pt
          join pg_catalog.pg_namespace n on n.nspname = pt.schemaname
          join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
         where pt.pubname = %(pub)s offset 0) t,
       unnest(%(roles)s::text[]) r
 where not pg_catalog.has_any_column_privilege(r, t.oid, 'SELECT')
 order by 1, 2, 3
"""
_CREATE_SQL = ("select pg_catalog.to_regnamespace('realtime') is not null, "
               "pg_catalog.has_database_privilege(current_database(), 'CREATE')")
_MESSAGES_SQL = """
select c.relrowsecurity, (select count(*) from pg_catalog.pg_policy p where p.polrelid = c.oid)
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'realtime' and c.relname = 'messages'
"""


def one_line(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip()


def connect(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, connect_timeout=TIMEOUT_S, autocommit=True)
    conn.execute(f"set statement_timeout = '{TIMEOUT_S}s'")
    return conn


def database_checks(target: Target) -> list[Result]:
    if not target.database_url:
        return [warn("database", "database", "not configured: postgres_changes and private channels are off",
                     "export REALTIME_DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DATABASE")]
    shown = redact(target.database_url)
    try:
        conn = connect(target.database_url)
    except psycopg.Error as exc:
        return [fail("database", f"database {shown}", f"unreachable ({one_line(exc)})",
                     f"start PostgreSQL, or correct --database-url / REALTIME_DATABASE_URL; test with: "
                     f"psql '{redact(target.database_url, None)}' -c 'select 1'"),
                *(skipped(check, what) for check, what in LATER_CHECKS)]
    with conn:
        results = [Result("database", "ok", f"database {shown} reachable")]
        for check, what in LATER_CHECKS:
            section = _SECTIONS.get(check)
            if section is None:
                continue
            try:
                results += section(conn, target)
            except psycopg.Error as exc:
                results.append(fail(check, what, f"could not be checked ({one_line(exc)})"))
    return results


def _login(conn: psycopg.Connection[Any], target: Target) -> list[Result]:
    row = conn.execute(_LOGIN_SQL).fetchone()
    assert row is not None
    wal_level, role, superuser, replication, _ = row
    return [check_wal_level(wal_level), check_replication(role, superuser, replication)]


def _publication(conn: psycopg.Connection[Any], target: Target) -> list[Result]:
    row = conn.execute(_PUBLICATION_SQL, (target.publication,)).fetchone()
    if row is None:
        return [check_publication(target.publication, False, []),
                Result("replica_identity", "skip", "published tables", f"skipped: no publication {target.publication}")]
    tables = [TableFacts(*r) for r in conn.execute(_TABLES_SQL, (target.publication,)).fetchall()]
    return [check_publication(target.publication, True, [qualified(t.schema, t.table) for t in tables]),
            *check_tables(tables, bool(row[0]))]


def _slots(conn: psycopg.Connection[Any], target: Target) -> list[Result]:
    keep = conn.execute(_KEEP_SIZE_SQL).fetchone()
    keep_mb = int(keep[0]) if keep is not None else -1
    database = conn.info.dbname
    results = []
    for name in target.slots:
        row = conn.execute(_SLOT_SQL, (name,)).fetchone()
        results.append(check_slot(name, SlotFacts(*row) if row is not None else None, database, keep_mb))
    keep_warning = check_keep_size(keep_mb)
    return results + ([keep_warning] if keep_warning is not None else [])


def _roles(conn: psycopg.Connection[Any], target: Target) -> list[Result]:
    rows = conn.execute(_ROLES_SQL, (list(CLIENT_ROLES),)).fetchall()
    login = conn.info.user
    results = check_roles(login, {r[0]: r[1] for r in rows}, [r[0] for r in rows if r[2]])
    present = [r for r in CLIENT_ROLES if any(row[0] == r for row in rows)]
    if not present:
        return results
    tables = conn.execute(_TABLES_SQL, (target.publication,)).fetchall()
    schemas = sorted({"public", *(t[0] for t in tables)})
    no_usage: dict[str, list[str]] = {}
    for schema, role in conn.execute(_NO_USAGE_SQL, {"schemas": schemas, "roles": present}).fetchall():
        no_usage.setdefault(schema, []).append(role)
    no_select: dict[str, list[str]] = {}
    params = {"roles": present, "pub": target.publication}
    for schema, table, role in conn.execute(_NO_SELECT_SQL, params).fetchall():
        no_select.setdefault(qualified(schema, table), []).append(role)
    return [*results, check_grants(no_usage, no_select)]


def _messages(conn: psycopg.Connection[Any], target: Target) -> list[Result]:
    schema, can_create = conn.execute(_CREATE_SQL).fetchone() or (False, False)
    create = check_create_schema(conn.info.user, conn.info.dbname, schema, can_create)
    row = conn.execute(_MESSAGES_SQL).fetchone()
    return [*([create] if create is not None else []),
            check_messages(row is not None, bool(row and row[0]), int(row[1]) if row else 0)]


#: each section reports the checks of its LATER_CHECKS entry (and those that follow from it)
_SECTIONS: dict[str, Callable[[psycopg.Connection[Any], Target], list[Result]]] = {
    "wal_level": _login, "publication": _publication, "slot": _slots, "roles": _roles, "messages": _messages,
}


def load_tenant(settings: Settings, tenant: str) -> Target | Result:
    """The target of tenant ``tenant`` of REALTIME_TENANTS_DATABASE_URL (its database, slots and
    JWT settings, as its node runs with them), or why it cannot be had."""
    import asyncio

    from ..tenants.crypto import Crypto
    from ..tenants.model import settings_for
    from ..tenants.store import TenantStore

    assert settings.tenants_database_url is not None
    shown = redact(settings.tenants_database_url)
    if not settings.db_enc_key:
        return fail("tenant", f"tenant {tenant}", "REALTIME_TENANTS_DATABASE_URL needs DB_ENC_KEY to read it",
                    "export DB_ENC_KEY=<the 16 characters the server uses>")
    try:
        store = TenantStore(settings.tenants_database_url, Crypto(settings.db_enc_key, settings.db_enc_key_gcm))
        found = asyncio.run(store.get(tenant))
    except (psycopg.Error, ValueError) as exc:
        return fail("tenant", f"tenant {tenant}", f"cannot be read from {shown} ({' '.join(str(exc).split())})",
                    f"psql '{redact(settings.tenants_database_url, None)}' -c 'select external_id from "
                    "_realtime.tenants'")
    if found is None:
        return fail("tenant", f"tenant {tenant}", f"not found in {shown}",
                    "create it with the admin API: POST /api/tenants (docs/tenants.md)")
    return Target.from_settings(settings_for(settings, found), tenant)
