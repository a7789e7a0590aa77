"""Why a private join is allowed or refused: each policy of ``realtime.messages`` judged on its
own (docs/explain.md).

The verdict itself always comes from the checks the join uses (``ChannelAuthorizer.can_read`` /
``can_write``); this module adds the detail: every policy on ``realtime.messages``, whether it
applies to the caller's role and command, and what its expression gives for the row a check
would read or insert.  Inside one transaction that is rolled back, with the §7.3 settings of the
caller (``realtime.topic()``, ``auth.uid()``, ``auth.jwt()`` work), one probe row per extension
is inserted as the login role and copied into a temporary table readable by the caller's role;
then, as that role, each expression is evaluated over its copy — so a policy's subqueries on
other tables run with the caller's privileges and policies, as they do in the real check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from psycopg import AsyncConnection, sql
from psycopg import errors as pg_errors

from .authz import ChannelAuthorizer, _role_of, _set_role

__all__ = ["PolicyVerdict", "policy_verdicts"]

_POLICIES_SQL: Final = """
select p.polname, p.polcmd, p.polpermissive,
       coalesce(array(select r.rolname from pg_catalog.pg_roles r where r.oid = any(p.polroles)
                      order by r.rolname), '{}'::name[])::text[],
       pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
       0 = any(p.polroles) or exists (select 1 from pg_catalog.pg_roles r where r.oid = any(p.polroles)
                                      and pg_catalog.pg_has_role(%s, r.oid, 'member'))
  from pg_catalog.pg_policy p
 where p.polrelid = 'realtime.messages'::regclass
 order by p.polname
"""
_COMMANDS: Final = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
_PROBE_SQL: Final = ("insert into realtime.messages (topic, extension)"
                     " select %s, e from pg_catalog.unnest(%s::text[]) as e returning id")


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    """One policy, for one check (``purpose`` read or write, on ``extension``)."""

    name: str
    command: str
    permissive: bool
    roles: tuple[str, ...]
    applies: bool
    expression: str | None
    #: the expression's value for the probe row (``None``: not evaluated or NULL)
    result: bool | None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "command": self.command, "permissive": self.permissive,
                "roles": list(self.roles) or ["public"], "applies": self.applies,
                "expression": self.expression, "result": self.result, "error": self.error}


async def policy_verdicts(authorizer: ChannelAuthorizer, sub_topic: str, claims: Mapping[str, Any],
                          headers: Mapping[str, str], extensions: Sequence[str]
                          ) -> dict[tuple[str, str], list[PolicyVerdict]]:
    """Per (purpose, extension) — purpose ``read`` or ``write`` — the policies of
    ``realtime.messages`` judged for the caller; empty lists when the role is unknown."""
    role = _role_of(claims)
    wanted = list(dict.fromkeys(extensions))
    out: dict[tuple[str, str], list[PolicyVerdict]] = {(p, e): [] for p in ("read", "write") for e in wanted}
    if role is None or not wanted:
        return out

    async def explain(conn: AsyncConnection[Any]) -> dict[tuple[str, str], list[PolicyVerdict]]:
        async with conn.transaction(force_rollback=True):
            if not await authorizer._settings(conn, sub_topic, claims, headers, role):
                return out
            policies = await (await conn.execute(_POLICIES_SQL, (role,))).fetchall()
            ids = [r[0] for r in await (await conn.execute(_PROBE_SQL, (sub_topic, wanted))).fetchall()]
            await conn.execute("create temporary table rc_explain_probe on commit drop as"
                               " select * from realtime.messages where id = any(%s)", (ids,))
            await conn.execute(sql.SQL("grant select on rc_explain_probe to {}").format(sql.Identifier(role)))
            if not await _set_role(conn, role):
                return out
            for name, cmd, permissive, roles, qual, check, applies in policies:
                for purpose, commands, expression in (("read", ("r", "*"), qual), ("write", ("a", "*"), check or qual)):
                    if cmd not in commands:
                        continue
                    for ext in wanted:
                        result, error = (None, None)
                        if applies and expression is not None:
                            result, error = await _evaluate(conn, expression, ext)
                        out[(purpose, ext)].append(PolicyVerdict(
                            name, _COMMANDS.get(cmd, cmd), bool(permissive), tuple(roles), bool(applies),
                            expression, result, error))
        return out

    return await authorizer._run(explain)


async def _evaluate(conn: AsyncConnection[Any], expression: str, extension: str) -> tuple[bool | None, str | None]:
    """The policy expression (the database's own text, from ``pg_get_expr``) over the probe row
    of ``extension``, as the caller's role; a failure is that policy's error."""
    query = sql.SQL("select ({})::boolean from pg_temp.rc_explain_probe as messages where extension = %s").format(
        sql.SQL(expression))  # the database's own policy text (pg_get_expr)
    try:
        async with conn.transaction():  # a savepoint: one failing policy leaves the others
            row = await (await conn.execute(query, (extension,))).fetchone()
    except pg_errors.Error as exc:
        return None, f"{exc.sqlstate}: {str(exc).strip().splitlines()[0]}"
    return (None if row is None or row[0] is None else bool(row[0])), None
