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
    claims jsonb,
    xid bigint default null
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
    perform realtime.rc_wait_visible(xid);
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
            select run.visible, run.error into visible, error from realtime.rc_run_as(q, c, role_name, pks, n) run;
        end if;
        return next;
    end loop;
    perform pg_catalog.set_config('role', 'none', true);
end
$rc$;
"""

# ``realtime.rc_run_as`` runs one cohort's visibility query: as the cohort's role, with its claims
# set the way Supabase sets them (so ``auth.uid()``, ``auth.role()`` and ``auth.jwt()`` work in
# policies), in a sub-transaction of its own, so a failure (no privilege, a policy casting a bad
# ``sub``) becomes that cohort's ``error`` and undoes its settings.  Shared by both checks.
RUN_AS_SQL: Final = r"""
create or replace function realtime.rc_run_as(q text, c jsonb, role_name text, args text[], n int,
                                              out visible int[], out error text)
language plpgsql
volatile
security invoker
as $rc$
begin
    perform pg_catalog.set_config('role', role_name, true),
            pg_catalog.set_config('request.jwt.claims', c::text, true),
            pg_catalog.set_config('request.jwt.claim.sub', coalesce(c ->> 'sub', ''), true),
            pg_catalog.set_config('request.jwt.claim.role', role_name, true);
    execute q into visible using args, n;
    -- back to the login role: the next cohort's look-ups and call run as it (an error instead
    -- rolls the sub-transaction back, settings included)
    perform pg_catalog.set_config('role', 'none', true);
exception when others then
    visible := null;
    error := sqlstate || ': ' || sqlerrm;
end
$rc$;
"""

# ``realtime.rc_wait_visible(xid)`` returns once the transaction ``xid`` (the 32-bit id of
# pgoutput's Begin message) is visible to new snapshots.  The walsender may stream a commit as
# soon as its record is flushed, before the committing backend leaves the ProcArray; with a
# synchronous standby the commit stays invisible until the standby confirms it.  A query run in
# that window does not see the transaction's rows.  The 64-bit id is rebuilt from the current
# snapshot's xmax (the first id it treats as still running).  Each loop
# iteration is a new statement of a volatile function under READ COMMITTED, so it takes a fresh
# snapshot.  It gives up after ``timeout_ms`` and returns false (the caller judges anyway).
WAIT_VISIBLE_SQL: Final = r"""
create or replace function realtime.rc_wait_visible(xid bigint, timeout_ms int default 10000)
returns boolean
language plpgsql
volatile
security invoker
as $rc$
declare
    snap pg_catalog.pg_snapshot;
    xmax bigint;
    d bigint;
    full_xid bigint;
    deadline timestamptz := pg_catalog.clock_timestamp()
                            + pg_catalog.make_interval(secs => timeout_ms / 1000.0);
begin
    if xid is null or xid < 3 then  -- invalid, bootstrap and frozen ids are always visible
        return true;
    end if;
    loop
        snap := pg_catalog.pg_current_snapshot();
        xmax := pg_catalog.pg_snapshot_xmax(snap)::text::bigint;
        -- the 64-bit id nearest to xmax whose low 32 bits are xid (ids are compared modulo
        -- 2^32 within 2^31 of each other); at or above xmax it is not visible yet
        d := xid - (xmax & 4294967295);
        if d >= 2147483648 then
            d := d - 4294967296;
        elsif d < -2147483648 then
            d := d + 4294967296;
        end if;
        full_xid := xmax + d;
        if full_xid < 0
           or pg_catalog.pg_visible_in_snapshot(full_xid::text::pg_catalog.xid8, snap) then
            return true;
        end if;
        if pg_catalog.clock_timestamp() > deadline then
            return false;
        end if;
        perform pg_catalog.pg_sleep(0.0002);
    end loop;
end
$rc$;
"""

# ``realtime.rc_visible_images`` judges row *images* — the values a change carries in the WAL —
# rather than the rows the table holds now.  Arguments: the table, the xid of the change's
# transaction (waited for first, so policies that read other tables see what that transaction
# wrote), the image's column names (every column of the table, in any order), the values of n
# images as one flat text array in row-major order, and the cohorts' claims.
#
# For each cohort it builds, as PostgreSQL's row security does for a SELECT:
#   * no check at all (every image admitted) when the role is a superuser, has BYPASSRLS, owns
#     the table (has the owner's privileges) without FORCE ROW LEVEL SECURITY, or the table has
#     row security disabled;
#   * otherwise the USING expressions of the policies for SELECT or ALL that apply to the role
#     (PUBLIC, or a role whose privileges it has): permissive ones OR-ed, restrictive ones
#     AND-ed onto them; no permissive policy means nothing is visible.
# Policy expressions come from pg_get_expr with search_path = pg_catalog, so every name in them
# is schema-qualified; their unqualified column references, and the references subqueries make
# to the table by its name, resolve to a derived relation carrying the image's values under the
# table's name and column names:
#
#   select coalesce(array_agg(g."rc row#" - 1 order by g."rc row#"), '{}')
#     from generate_series(1, n) as g("rc row#")
#          cross join lateral (select ($3[(g."rc row#" - 1) * m + 1])::t1 as c1, ... offset 0) as <table>
#    where (<permissive> or ...) and <restrictive> and ...
#
# and runs it as the cohort's role with its claims set (auth.uid(), auth.jwt() work unchanged),
# after checking the role may SELECT the table or every key column — as reading it would need.
# Failures stay per cohort, as in rc_visible_batch.
VISIBLE_IMAGES_SQL: Final = r"""
create or replace function realtime.rc_visible_images(
    tbl regclass,
    xid bigint,
    cols text[],
    vals text[],
    claims jsonb
)
returns table (cohort int, visible int[], error text)
language plpgsql
volatile
security invoker
as $rc$
declare
    m int := coalesce(pg_catalog.array_length(cols, 1), 0);
    n int;
    rel record;
    sel text := '';
    col_type text;
    src text;
    q_all text;
    q text;
    pol text;
    c jsonb;
    role_name text;
    r record;
    last_role text;
    last_q text;
    idx constant text := 'rc row#';
    saved_path text := pg_catalog.current_setting('search_path');
begin
    if m = 0 then
        raise exception 'rc_visible_images: no columns given for %', tbl using errcode = '22023';
    end if;
    n := coalesce(pg_catalog.array_length(vals, 1), 0) / m;
    if n * m <> coalesce(pg_catalog.array_length(vals, 1), 0) then
        raise exception 'rc_visible_images: % values do not split into rows of %',
            pg_catalog.array_length(vals, 1), m using errcode = '22023';
    end if;
    if claims is null or pg_catalog.jsonb_typeof(claims) <> 'array' then
        raise exception 'rc_visible_images: claims must be a JSON array' using errcode = '22023';
    end if;
    if exists (select from pg_catalog.pg_attribute a
                where a.attrelid = tbl and a.attnum > 0 and not a.attisdropped
                  and not (a.attname = any (cols))) then
        raise exception 'rc_visible_images: the image of % lacks some of its columns', tbl
            using errcode = '42703';
    end if;
    perform realtime.rc_wait_visible(xid);

    select cl.relname, cl.relowner, cl.relrowsecurity, cl.relforcerowsecurity into rel
      from pg_catalog.pg_class cl where cl.oid = tbl;
    perform pg_catalog.set_config('search_path', 'pg_catalog', true);
    for i in 1 .. m loop
        select pg_catalog.format_type(a.atttypid, -1) into col_type
          from pg_catalog.pg_attribute a
         where a.attrelid = tbl and a.attname = cols[i] and a.attnum > 0 and not a.attisdropped;
        if not found then
            raise exception 'rc_visible_images: column % of % does not exist', cols[i], tbl
                using errcode = '42703';
        end if;
        sel := sel || case when i > 1 then ', ' else '' end
               || pg_catalog.format('($1[(g.%I - 1) * %s + %s])::%s as %I', idx, m, i, col_type, cols[i]);
    end loop;
    src := pg_catalog.format(
        'from pg_catalog.generate_series(1, $2) as g(%I) cross join lateral (select %s offset 0) as %I',
        idx, sel, rel.relname);
    q_all := pg_catalog.format(
        'select coalesce(pg_catalog.array_agg(g.%I - 1 order by g.%I), ''{}''::int[]) %s', idx, idx, src);
    perform pg_catalog.set_config('search_path', saved_path, true);

    for ci in 0 .. pg_catalog.jsonb_array_length(claims) - 1 loop
        c := claims -> ci;
        cohort := ci;
        visible := null;
        error := null;
        role_name := c ->> 'role';
        select ro.oid, ro.rolsuper, ro.rolbypassrls into r
          from pg_catalog.pg_roles ro where ro.rolname = role_name;
        if role_name is null or role_name = '' then
            error := 'claims carry no role';
        elsif not found then
            error := pg_catalog.format('role "%s" does not exist', role_name);
        elsif not (pg_catalog.has_table_privilege(r.oid, tbl, 'SELECT')
                   or (exists (select from pg_catalog.pg_index ix where ix.indrelid = tbl and ix.indisprimary)
                       and not exists (
                           select from pg_catalog.pg_index ix, pg_catalog.unnest(ix.indkey::int2[]) as k(attnum)
                            where ix.indrelid = tbl and ix.indisprimary
                              and not pg_catalog.has_column_privilege(r.oid, tbl, k.attnum, 'SELECT')))) then
            error := pg_catalog.format('42501: permission denied for table %s', rel.relname);
        else
            if not rel.relrowsecurity or r.rolsuper or r.rolbypassrls
               or (not rel.relforcerowsecurity and pg_catalog.pg_has_role(r.oid, rel.relowner, 'USAGE')) then
                q := q_all;
            elsif role_name is not distinct from last_role then
                q := last_q;
            else
                perform pg_catalog.set_config('search_path', 'pg_catalog', true);
                select coalesce('(' || pg_catalog.string_agg('(' || pg_catalog.pg_get_expr(p.polqual, p.polrelid) || ')', ' or ')
                                        filter (where p.polpermissive) || ')', 'false')
                       || coalesce(' and ' || pg_catalog.string_agg('(' || pg_catalog.pg_get_expr(p.polqual, p.polrelid) || ')', ' and ')
                                              filter (where not p.polpermissive), '')
                  into pol
                  from pg_catalog.pg_policy p
                 where p.polrelid = tbl and p.polcmd in ('r', '*') and p.polqual is not null
                   and (0::oid = any (p.polroles)
                        or exists (select from pg_catalog.unnest(p.polroles) as pr(oid)
                                    where pr.oid <> 0 and pg_catalog.pg_has_role(r.oid, pr.oid, 'USAGE')));
                perform pg_catalog.set_config('search_path', saved_path, true);
                q := pg_catalog.format(
                    'select coalesce(pg_catalog.array_agg(g.%I - 1 order by g.%I), ''{}''::int[]) %s where %s',
                    idx, idx, src, coalesce(pol, 'false'));
                last_role := role_name;
                last_q := q;
            end if;
            select run.visible, run.error into visible, error from realtime.rc_run_as(q, c, role_name, vals, n) run;
        end if;
        return next;
    end loop;
    perform pg_catalog.set_config('role', 'none', true);
end
$rc$;
"""

INSTALL_SQL: Final = (
    "create schema if not exists realtime;\n"
    # the four-argument version of earlier releases would make four-argument calls ambiguous
    "drop function if exists realtime.rc_visible_batch(regclass, text[], text[], jsonb);\n"
    + RUN_AS_SQL + WAIT_VISIBLE_SQL + VISIBLE_BATCH_SQL + VISIBLE_IMAGES_SQL
)

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
