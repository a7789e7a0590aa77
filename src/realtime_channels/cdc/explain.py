"""Would a subscriber receive the changes of a row, and if not, why (docs/explain.md)?

Each check names one thing postgres_changes needs (protocol.md §6): the table in the
publication with the event published, a primary key, the role's column privileges, a filter that
parses and matches, and for RLS tables the policies that admit the row for the subscriber's
claims.  The row is looked up by its primary key.  For a caller who may not read the row, the
answer never says whether it exists: only that it is not visible, and which policies apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
from psycopg import AsyncConnection, sql
from psycopg import errors as pg_errors

from .. import errors
from . import catalog, pgoutput
from .bindings import Binding
from .filters import parse_filter
from .record import Row
from .subscriptions import typed_conditions
from .types import Change, TableInfo

__all__ = ["explain_change"]

_PUBLICATION_SQL: Final = """
select exists (select 1 from pg_catalog.pg_publication_tables
                where pubname = %(pub)s and schemaname = %(schema)s and tablename = %(table)s),
       p.pubinsert, p.pubupdate, p.pubdelete
  from pg_catalog.pg_publication p where p.pubname = %(pub)s
"""
_REPLICA_IDENTITY: Final = {"d": "default (the primary key)", "f": "full", "n": "nothing", "i": "an index"}
_TABLE_POLICIES_SQL: Final = """
select p.polname, p.polpermissive, pg_catalog.pg_get_expr(p.polqual, p.polrelid)
  from pg_catalog.pg_policy p
 where p.polrelid = %(relid)s and p.polcmd in ('r', '*')
   and (0 = any(p.polroles) or exists (select 1 from pg_catalog.pg_roles r where r.oid = any(p.polroles)
                                       and pg_catalog.pg_has_role(%(role)s, r.oid, 'member')))
 order by p.polname
"""


def _check(name: str, ok: bool, detail: str, **extra: Any) -> dict[str, Any]:
    return {"check": name, "ok": ok, "detail": detail, **extra}


async def explain_change(conn: AsyncConnection[Any], *, publication: str, schema: str, table: str, pk: str,
                         claims: Mapping[str, Any], event: str = "*", filter_text: str | None = None,
                         privileged: bool = False) -> dict[str, Any]:
    """The answer for one row; ``privileged``: the caller may read every row (service role)."""
    checks: list[dict[str, Any]] = []
    role = claims.get("role")
    answer = {"schema": schema, "table": table, "pk": pk, "role": role, "event": event, "checks": checks}

    def verdict() -> dict[str, Any]:
        failed = [c for c in checks if not c["ok"]]
        answer["verdict"] = "delivered" if not failed else "not delivered"
        answer["reasons"] = [f"{c['check']}: {c['detail']}" for c in failed]
        return answer

    info = await catalog.table_info(conn, schema, table)
    if info is None:
        checks.append(_check("table", False, f"there is no table {schema}.{table}"))
        return verdict()
    row = await (await conn.execute(_PUBLICATION_SQL, {"pub": publication, "schema": schema, "table": table})).fetchone()
    kinds = ("INSERT", "UPDATE", "DELETE") if event == "*" else (event,)
    if row is None:
        checks.append(_check("publication", False, f"the publication {publication} does not exist"))
    elif not row[0]:
        checks.append(_check("publication", False, f"{schema}.{table} is not in the publication {publication}",
                             fix=f"alter publication {publication} add table {schema}.{table};"))
    else:
        published = {k for k, on in zip(("INSERT", "UPDATE", "DELETE"), row[1:], strict=True) if on}
        missing = [k for k in kinds if k not in published]
        checks.append(_check("publication", not missing,
                             f"in {publication}, publishing {', '.join(sorted(published)) or 'nothing'}"
                             + (f"; {', '.join(missing)} not published" if missing else "")))
    ident = await (await conn.execute("select relreplident::text from pg_catalog.pg_class where oid = %s",
                                      (info.relid,))).fetchone()
    identity = _REPLICA_IDENTITY.get(ident[0] if ident else "d", "default")
    checks.append(_check("replica identity", True, f"{identity}: " + (
        "UPDATE and DELETE carry the whole old row" if identity == "full" else
        "DELETE and UPDATE carry no old row" if identity == "nothing" else
        "UPDATE and DELETE carry the primary key as old_record")))
    if not info.pk:
        checks.append(_check("primary key", False, "the table has none: changes arrive as "
                             "\"Error 400: Bad Request, no primary key\""))
        return verdict()
    if not isinstance(role, str) or not await catalog.role_exists(conn, role):
        checks.append(_check("role", False, f"the token's role {role!r} is not a database role"))
        return verdict()
    allowed = await catalog.selectable_columns(conn, role, info.relid)
    hidden_pk = [k for k in info.pk if k not in allowed]
    checks.append(_check("column privileges", not hidden_pk and bool(allowed),
                         f"{role} may select {', '.join(c.name for c in info.columns if c.name in allowed) or 'no column'}"
                         + (f"; not the key ({', '.join(hidden_pk)}): changes arrive as \"Error 401: Unauthorized\""
                            if hidden_pk else "")))
    conds = None
    if filter_text:
        binding = Binding(0, event, schema, table, filter_text, None)
        try:
            conds = typed_conditions(binding, parse_filter(filter_text), info, allowed)
            checks.append(_check("filter", True, f"{filter_text} is valid"))
        except errors.SubscribeError as err:
            checks.append(_check("filter", False, err.message))
    values = await _row(conn, info, pk)
    if values is None and not privileged:
        # whether it exists is not the caller's to know unless they can read it
        visible = False
    elif values is None:
        checks.append(_check("row", False, f"no row of {schema}.{table} has the key {pk}"))
        return verdict()
    else:
        visible = await _visible_as(conn, info, pk, role, claims)
    if info.rls_enabled:
        policies = await (await conn.execute(_TABLE_POLICIES_SQL, {"relid": info.relid, "role": role})).fetchall()
        listed = [{"name": n, "permissive": bool(p), "expression": e} for n, p, e in policies]
        if visible:
            checks.append(_check("row level security", True, f"the policies admit the row for {role}", policies=listed))
        else:
            what = "the row is hidden by the table's policies" if privileged else \
                "no row with this key is visible to you (it does not exist, or the policies hide it)"
            if not listed:
                what += f"; no SELECT policy applies to {role}"
            checks.append(_check("row level security", False, what, policies=listed,
                                 note="DELETEs are delivered without an RLS check (only the key)"))
    elif not visible and not privileged:
        checks.append(_check("row", False, "no row with this key is visible to you"))
    if conds is not None and values is not None and (visible or privileged):
        matched = _matches(info, values, conds)
        checks.append(_check("filter match", matched, f"the row {'matches' if matched else 'does not match'} "
                                                      f"{filter_text}"))
    return verdict()


def _pk_values(info: TableInfo, pk: str) -> list[str]:
    parts = pk.split(",") if len(info.pk) > 1 else [pk]
    if len(parts) != len(info.pk):
        raise ValueError(f"pk needs {len(info.pk)} comma-separated values ({', '.join(info.pk)})")
    return parts


async def _row(conn: AsyncConnection[Any], info: TableInfo, pk: str) -> list[str | None] | None:
    """The row's values as text, looked up as the server's login role (``None``: no such row)."""
    where = sql.SQL(" and ").join(sql.SQL("{}::text = %s").format(sql.Identifier(k)) for k in info.pk)
    query = sql.SQL("select {} from {}.{} where {}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in info.columns),
        sql.Identifier(info.schema), sql.Identifier(info.name), where)
    row = await (await conn.execute(query, _pk_values(info, pk))).fetchone()
    return None if row is None else list(row)


async def _visible_as(conn: AsyncConnection[Any], info: TableInfo, pk: str, role: str, claims: Mapping[str, Any]) -> bool:
    """Whether the subscriber's role and claims may select the row (RLS and grants applied)."""
    where = sql.SQL(" and ").join(sql.SQL("{}::text = %s").format(sql.Identifier(k)) for k in info.pk)
    query = sql.SQL("select 1 from {}.{} where {}").format(sql.Identifier(info.schema), sql.Identifier(info.name), where)
    async with conn.transaction(force_rollback=True):
        await conn.execute(
            "select pg_catalog.set_config('request.jwt.claims', %s, true),"
            " pg_catalog.set_config('request.jwt.claim.sub', %s, true),"
            " pg_catalog.set_config('request.jwt.claim.role', %s, true), pg_catalog.set_config('role', %s, true)",
            (orjson.dumps(dict(claims)).decode(), str(claims.get("sub") or ""), role, role))
        try:
            return await (await conn.execute(query, _pk_values(info, pk))).fetchone() is not None
        except pg_errors.InsufficientPrivilege:
            return False


def _matches(info: TableInfo, values: list[str | None], conds: Any) -> bool:
    relation = pgoutput.Relation(info.relid, info.schema, info.name, "d", tuple(
        pgoutput.Column(1 if c.is_pk else 0, c.name, c.type_oid, -1) for c in info.columns))
    tup = pgoutput.TupleData(tuple(None if v is None else v.encode() for v in values))
    return Row(Change(relation, "INSERT", tup, None, None), info).matches(conds)
