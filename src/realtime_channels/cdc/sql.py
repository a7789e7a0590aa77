"""Our database objects for ``postgres_changes``, as SQL text, and their idempotent installers.

Everything we create lives in schema ``realtime`` with an ``rc_`` prefix, so it never clashes
with the objects Supabase keeps in the same schema (CDC.md).

``realtime.rc_visible_batch`` is the batched visibility check of design.md §3 "RLS" and
postgres-cdc.md Q4 "D": one call answers, for every claims cohort, which rows of a batch of
changes are visible *now* to that cohort's role and claims (protocol.md §6.6).
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import AsyncConnection

__all__ = [
    "AUTH_HELPERS_SQL",
    "INSTALL_SQL",
    "VISIBLE_BATCH_SQL",
    "install",
    "install_auth_helpers",
]

# Serialises concurrent installers (two servers starting together): `create or replace
# function` racing itself fails with "tuple concurrently updated". Any constant works; this one
# spells "rc_install" in ASCII.
#: one advisory lock for every installer of our objects (RLS function, migrations, reader)
INSTALL_LOCK: Final = 0x72635F696E7374


# Theory of operation
# -------------------
# Arguments: the table (`tbl`), its primary-key column names (`pk_cols`, k of them), the key
# values of n changed rows as ONE flat text array in row-major order (`pks`, n*k entries, the
# text form pgoutput sends, so `::type` gives the stored value back exactly), and a JSON array
# of claims objects, one per cohort.
#
# The key columns' types come from pg_attribute and are rendered by format_type(oid, -1): -1
# means "no modifier", which yields the unconstrained spelling ("bit", bpchar, numeric) — with
# NULL instead, bit and char would mean bit(1)/char(1) and a cast would silently truncate.
# One query is built per call (not per cohort):
#
#   select array_agg(b.i - 1)
#     from (select g.i, ($1[(g.i-1)*k + 1])::t1 as k1, ... from generate_series(1, n) g(i)
#           offset 0) b
#    where exists (select from <tbl> t where t.<c1> = b.k1 and ... offset 0)
#
# Run once per cohort after `set_config('role', ...)`, the table's policies apply to `t`, so
# exactly the keys whose row the cohort may SELECT in its current state survive (a row deleted
# since the change matches nothing). Claims are set the way Supabase sets them, so
# `auth.uid()`, `auth.role()` and `auth.jwt()` work in policies unchanged (protocol.md §6.6).
#
# Plan shape, measured (notes, 2,000 rows, 100 keys: 0.7 ms vs 4.7 ms, and the gap grows with
# the table): both `offset 0` keep the key lookup a per-key probe of the primary-key index.
# Without them the planner flattens the keys into the join clause, where the text-to-type cast
# is not leakproof, so the clause may not run before the policies (security-barrier order) and
# the table is scanned in full with every policy evaluated on every row. With them the probe
# compares the column with a plain parameter; for key types whose `=` is leakproof (integers,
# text, uuid, timestamps...) that is an index condition. (numeric and enum keys are not:
# PostgreSQL then filters, as it does for Supabase's own per-row check.)
#
# Failures stay per cohort: a role that does not exist (or is empty or missing) is answered
# without trying it — `set_config('role', 'none')` would otherwise mean the session user — and
# anything the query raises (no SELECT privilege, a policy casting a bad `sub` to uuid) is
# caught in that cohort's own sub-transaction, which also undoes its set_config calls. The
# cohort then gets `visible = null` and the error text; the other cohorts are unaffected.
#
# All settings are transaction-local (`is_local = true`) and `role` is reset at the end; the
# caller runs the call as a single implicit transaction or in a rolled-back block, so nothing
# leaks into the session. SECURITY INVOKER is required: PostgreSQL forbids changing `role`
# inside a SECURITY DEFINER function. Changing role is checked against the *session* user, so
# the login role must be a member of every role it switches to (postgres-cdc.md Q4).
VISIBLE_BATCH_SQL: Final = r"""
create or replace function realtime.rc_visible_batch(
    tbl regclass,
    pk_cols text[],
    pks text[],
    claims jsonb
)
returns table (cohort int, visible int[], error text)
language plpgsql
volatile
security invoker
as $rc$
declare
    k int := coalesce(pg_catalog.array_length(pk_cols, 1), 0);
    n int;
    sel text := '';
    cond text := '';
    col_type text;
    q text;
    c jsonb;
    role_name text;
begin
    if k = 0 then
        raise exception 'rc_visible_batch: % has no primary-key columns given', tbl
            using errcode = '22023';
    end if;
    n := coalesce(pg_catalog.array_length(pks, 1), 0) / k;
    if n * k <> coalesce(pg_catalog.array_length(pks, 1), 0) then
        raise exception 'rc_visible_batch: % key values do not split into rows of %',
            pg_catalog.array_length(pks, 1), k using errcode = '22023';
    end if;
    if claims is null or pg_catalog.jsonb_typeof(claims) <> 'array' then
        raise exception 'rc_visible_batch: claims must be a JSON array' using errcode = '22023';
    end if;

    for i in 1 .. k loop
        select pg_catalog.format_type(a.atttypid, -1) into col_type
          from pg_catalog.pg_attribute a
         where a.attrelid = tbl and a.attname = pk_cols[i] and a.attnum > 0
           and not a.attisdropped;
        if not found then
            raise exception 'rc_visible_batch: column % of % does not exist', pk_cols[i], tbl
                using errcode = '42703';
        end if;
        sel := sel || pg_catalog.format(', ($1[(g.i - 1) * %s + %s])::%s as k%s', k, i, col_type, i);
        cond := cond || case when i > 1 then ' and ' else '' end
                     || pg_catalog.format('t.%I = b.k%s', pk_cols[i], i);
    end loop;
    q := pg_catalog.format(
        'select coalesce(pg_catalog.array_agg(b.i - 1 order by b.i), ''{}''::int[]) '
        'from (select g.i%s from pg_catalog.generate_series(1, $2) as g(i) offset 0) as b '
        'where exists (select from %s as t where %s offset 0)',
        sel, tbl, cond);

    for ci in 0 .. pg_catalog.jsonb_array_length(claims) - 1 loop
        c := claims -> ci;
        cohort := ci;
        visible := null;
        error := null;
        role_name := c ->> 'role';
        if role_name is null or role_name = '' then
            error := 'claims carry no role';
        elsif not exists (select 1 from pg_catalog.pg_roles r where r.rolname = role_name) then
            error := pg_catalog.format('role "%s" does not exist', role_name);
        else
            begin
                perform pg_catalog.set_config('role', role_name, true),
                        pg_catalog.set_config('request.jwt.claims', c::text, true),
                        pg_catalog.set_config('request.jwt.claim.sub', coalesce(c ->> 'sub', ''), true),
                        pg_catalog.set_config('request.jwt.claim.role', role_name, true);
                execute q into visible using pks, n;
            exception when others then
                visible := null;
                error := sqlstate || ': ' || sqlerrm;
            end;
        end if;
        return next;
    end loop;
    perform pg_catalog.set_config('role', 'none', true);
end
$rc$;
"""

INSTALL_SQL: Final = "create schema if not exists realtime;\n" + VISIBLE_BATCH_SQL

# Minimal `auth.uid()`, `auth.role()`, `auth.jwt()` for plain PostgreSQL (no Supabase), each
# created only when missing so a Supabase database keeps its own. They read the settings that
# rc_visible_batch sets. `nullif(..., '')` because a custom setting once set in a session reads
# back as '' after its transaction ends, and ''::jsonb would raise.
AUTH_HELPERS_SQL: Final = r"""
do $rc$
begin
    if not exists (select 1 from pg_catalog.pg_namespace where nspname = 'auth') then
        create schema auth;
        grant usage on schema auth to public;
    end if;
    if pg_catalog.to_regprocedure('auth.jwt()') is null then
        create function auth.jwt() returns jsonb language sql stable as $f$
            select nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb
        $f$;
    end if;
    if pg_catalog.to_regprocedure('auth.uid()') is null then
        create function auth.uid() returns uuid language sql stable as $f$
            select coalesce(
                nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
            )::uuid
        $f$;
    end if;
    if pg_catalog.to_regprocedure('auth.role()') is null then
        create function auth.role() returns text language sql stable as $f$
            select coalesce(
                nullif(pg_catalog.current_setting('request.jwt.claim.role', true), ''),
                nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
            )
        $f$;
    end if;
end
$rc$;
"""


async def _run_locked(conn: AsyncConnection[Any], sql: str) -> None:
    # One transaction holding an advisory lock, so concurrent installers take turns; works on
    # autocommit connections and on ones already inside a transaction (then a savepoint).
    async with conn.transaction():
        await conn.execute("select pg_catalog.pg_advisory_xact_lock(%s)", (INSTALL_LOCK,))
        await conn.execute(sql)


async def install(conn: AsyncConnection[Any]) -> None:
    """Create schema ``realtime`` if missing and (re)create ``realtime.rc_visible_batch``.

    Idempotent; safe to call from several servers at once."""
    await _run_locked(conn, INSTALL_SQL)


async def install_auth_helpers(conn: AsyncConnection[Any]) -> None:
    """Create schema ``auth`` and ``auth.uid()``/``auth.role()``/``auth.jwt()`` where missing.

    Optional: only for plain PostgreSQL, where policies written for Supabase would otherwise
    not compile. Existing functions (a Supabase database) are left untouched."""
    await _run_locked(conn, AUTH_HELPERS_SQL)
