"""Catalog look-ups, binding → table matching and batched RLS visibility against a real
PostgreSQL (protocol.md §6.1, §6.3, §6.6, §6.8, §7.2; design.md §3 "RLS"; checklist 94, 96).

The module has its own database on the session's private cluster (``pg_cluster``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from pgcluster import create_database, drop_database

from realtime_channels.cdc import catalog, sql
from realtime_channels.cdc.catalog import CatalogCache, TableInfo, match_tables
from realtime_channels.cdc.rls import RlsChecker, cohort_key

DBNAME = "rc_test_catalog_rls"
PUB = "rc_pub_catalog"

# Supabase's roles themselves come from pgcluster.create_database.
ROLE_GRANTS_SQL = """
grant anon, authenticated, service_role to current_user;
"""

# The notes table of postgres-cdc.md Q4: two permissive policies, OR-ed by PostgreSQL.
NOTES_SQL = """
create table notes(id int8 primary key, owner uuid not null, team text not null, body text);
alter table notes enable row level security;
create policy by_owner on notes for select to authenticated using (owner = auth.uid());
create policy by_team on notes for select to authenticated
    using (team in (select jsonb_array_elements_text(auth.jwt() -> 'teams')));
grant select on notes to anon, authenticated, service_role;
"""

USERS = [uuid.UUID(int=0x1000 + i) for i in range(5)]
TEAMS = 7
NOTE_ROWS = 120  # ids 1..120; the batches below also ask for ids that were never inserted


def note_owner(note_id: int) -> uuid.UUID:
    return USERS[note_id % len(USERS)]


def note_team(note_id: int) -> str:
    return f"t{note_id % TEAMS}"


def user_claims(i: int) -> dict[str, Any]:
    return {"role": "authenticated", "sub": str(USERS[i]), "teams": [f"t{i}"], "aud": "authenticated"}


@dataclass
class Db:
    dsn: str
    admin: psycopg.Connection[Any]

    def execute(self, query: Any, params: Any = None) -> list[Any]:
        cur = self.admin.execute(query, params)
        return cur.fetchall() if cur.description else []


async def _install(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await sql.install(conn)
        await sql.install(conn)  # idempotent
        await sql.install_auth_helpers(conn)
        await sql.install_auth_helpers(conn)


@pytest.fixture(scope="module")
def db(pg_cluster: Any) -> Iterator[Db]:
    dsn = create_database(pg_cluster, DBNAME)
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as boot:
        boot.execute(ROLE_GRANTS_SQL)
    asyncio.run(_install(dsn))
    # pgoutput's text forms come from a walsender running with these settings (postgres-cdc.md
    # "Types"); the tests produce "pgoutput text" with the same ones.
    admin = psycopg.connect(dsn, autocommit=True, options="-c DateStyle=ISO -c TimeZone=UTC")
    admin.execute(NOTES_SQL)
    admin.execute(
        "insert into notes select g, (%s::uuid[])[g %% 5 + 1], 't' || (g %% 7), 'body ' || g"
        " from generate_series(1, %s) g",
        ([str(u) for u in USERS], NOTE_ROWS),
    )
    try:
        yield Db(dsn=dsn, admin=admin)
    finally:
        admin.close()
        drop_database(pg_cluster, DBNAME)


@pytest.fixture
async def conn(db: Db) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    # A different TimeZone from the walsender's on purpose: key texts must cast back exactly
    # whatever the checking session's settings.
    async with await psycopg.AsyncConnection.connect(
        db.dsn, autocommit=True, options="-c TimeZone=Asia/Kolkata"
    ) as c:
        yield c


class CountingConnection(psycopg.AsyncConnection[Any]):
    """A real connection that counts the statements sent through ``execute`` and, while
    ``gate`` is set to an unset event, holds them until it is set."""

    statements = 0
    gate: asyncio.Event | None = None
    waiting: asyncio.Event | None = None

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.statements += 1
        if self.gate is not None:
            if self.waiting is not None:
                self.waiting.set()
            await self.gate.wait()
        return await super().execute(*args, **kwargs)


def fresh(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# --- publication_tables / match_tables (protocol.md §6.1) ----------------------------------------


async def test_publication_tables_lists_only_published_tables_sorted(db: Db, conn: Any) -> None:
    db.execute("create schema if not exists shop")
    for ddl in (
        "create table if not exists public.todos(id int primary key)",
        "create table if not exists public.to_do(id int primary key)",
        "create table if not exists public.unpublished(id int primary key)",
        "create table if not exists shop.orders(id int primary key)",
    ):
        db.execute(ddl)
    db.execute(f"drop publication if exists {PUB}")
    db.execute(f"create publication {PUB} for table shop.orders, public.todos, public.to_do")

    assert await catalog.publication_tables(conn, PUB) == [
        ("public", "to_do"),
        ("public", "todos"),
        ("shop", "orders"),
    ]
    assert await catalog.publication_tables(conn, "no_such_publication") == []


PUBLISHED = [
    ("public", "notes"),
    ("public", "todos"),
    ("public", "to_do"),
    ("public", "Mixed"),
    ("shop", "orders"),
    ("shop", "order_items"),
    ("shop_2", "orders"),
    ("a\\b", "t"),
]


@pytest.mark.parametrize(
    ("schema", "table", "expected"),
    [
        # absent table: every table of the schema
        ("shop", None, [("shop", "orders"), ("shop", "order_items")]),
        # '*' table: the same
        ("shop", "*", [("shop", "orders"), ("shop", "order_items")]),
        # absent schema with a table means public
        (None, "todos", [("public", "todos")]),
        (None, "orders", []),
        # '*' schema: every schema of the publication
        ("*", "orders", [("shop", "orders"), ("shop_2", "orders")]),
        ("*", "*", PUBLISHED),
        ("*", None, PUBLISHED),
        # '_' and '%' act as LIKE wildcards, as in the reference
        ("public", "to_o", []),
        ("public", "to_do", [("public", "to_do")]),
        ("public", "to%", [("public", "todos"), ("public", "to_do")]),
        ("public", "t_d_", []),
        ("public", "t_do_", [("public", "todos")]),
        ("shop_", "orders", []),
        ("shop__", "orders", [("shop_2", "orders")]),
        ("shop%", "order%", [("shop", "orders"), ("shop", "order_items"), ("shop_2", "orders")]),
        # only a whole '*' is a wildcard; LIKE is case-sensitive; no escape character
        ("shop", "ord*", []),
        ("public", "mixed", []),
        ("public", "Mixed", [("public", "Mixed")]),
        ("a\\b", "t", [("a\\b", "t")]),
        ("a\\_", "t", [("a\\b", "t")]),  # the backslash is literal, '_' still a wildcard
        # neither given: nothing (the caller rejects such a binding first)
        (None, None, []),
    ],
)
def test_match_tables(schema: str | None, table: str | None, expected: list[tuple[str, str]]) -> None:
    assert match_tables(PUBLISHED, schema, table) == expected


def test_match_tables_underscore_matches_one_character() -> None:
    assert match_tables([("public", "todos"), ("public", "to_do")], "public", "to_s") == []
    assert match_tables([("public", "todos"), ("public", "to_do")], "public", "tod_s") == [
        ("public", "todos")
    ]
    assert match_tables([("public", "todos"), ("public", "toxdo")], "public", "to_do") == [
        ("public", "toxdo")
    ]


async def test_match_tables_on_a_live_publication(db: Db, conn: Any) -> None:
    db.execute("create schema if not exists shop")
    db.execute("create table if not exists shop.orders(id int primary key)")
    db.execute("create table if not exists public.todos(id int primary key)")
    db.execute("create table if not exists public.to_do(id int primary key)")
    db.execute(f"drop publication if exists {PUB}")
    db.execute(f"create publication {PUB} for table shop.orders, public.todos, public.to_do")
    published = await catalog.publication_tables(conn, PUB)
    assert match_tables(published, "*", "*") == published
    assert match_tables(published, "public", None) == [("public", "to_do"), ("public", "todos")]
    assert match_tables(published, None, "to_do") == [("public", "to_do")]
    assert match_tables(published, "public", "notes") == []  # exists, but is not published


# --- table_info ------------------------------------------------------------------------------------


async def test_table_info_types_domains_arrays_and_composite_key(db: Db, conn: Any) -> None:
    name = fresh("shape")
    db.execute("create schema if not exists types")
    db.execute(
        "do $$ begin"
        " if to_regtype('types.small_id') is null then"
        "   create domain types.small_id as int4 check (value > 0);"
        "   create domain types.tiny_id as types.small_id;"
        "   create domain types.tags as text[];"
        "   create type types.mood as enum ('ok', 'meh');"
        " end if; end $$"
    )
    db.execute(
        f"create table types.{name}("
        " region text, gone int, id types.tiny_id, counts int4[], labels types.tags,"
        " ids types.small_id[], moods types.mood[], price numeric(10,2), at timestamptz,"
        " primary key (id, region))"
    )
    db.execute(f"alter table types.{name} drop column gone")
    info = await catalog.table_info(conn, "types", name)
    assert info is not None
    assert (info.schema, info.name, info.rls_enabled) == ("types", name, False)
    assert info.relid == db.execute(f"select 'types.{name}'::regclass::oid")[0][0]
    by_name = {c.name: c for c in info.columns}
    assert [c.name for c in info.columns] == [
        "region", "id", "counts", "labels", "ids", "moods", "price", "at"
    ]
    assert [c.attnum for c in info.columns] == [1, 3, 4, 5, 6, 7, 8, 9]  # 2 was dropped
    # composite key in declared order, not table order
    assert info.pk == ("id", "region")
    assert {c.name for c in info.columns if c.is_pk} == {"id", "region"}

    oid = {r[0]: r[1] for r in db.execute(
        "select t::text, t::regtype::oid from unnest(array['types.tiny_id', 'types.tags',"
        " 'types.small_id[]', 'types.mood', 'types.mood[]']) t")}
    # a domain over a domain resolves to its base type
    assert (by_name["id"].type_name, by_name["id"].base_type_oid) == ("int4", 23)
    assert by_name["id"].type_oid == oid["types.tiny_id"]
    # arrays are '_elem', with their element type for the converters
    assert (by_name["counts"].type_name, by_name["counts"].type_oid) == ("_int4", 1007)
    assert by_name["counts"].element_type_oid == 23
    # a domain over text[] resolves to _text
    assert (by_name["labels"].type_name, by_name["labels"].base_type_oid) == ("_text", 1009)
    assert by_name["labels"].type_oid == oid["types.tags"]
    assert by_name["labels"].element_type_oid == 25
    # an array of a domain keeps its own type, its element resolved to the base type
    assert by_name["ids"].type_oid == oid["types.small_id[]"]
    assert by_name["ids"].element_type_oid == 23
    assert by_name["moods"].element_type_oid == oid["types.mood"]
    assert by_name["moods"].type_name == "_mood"
    assert (by_name["price"].type_name, by_name["at"].type_name) == ("numeric", "timestamptz")
    assert by_name["region"].element_type_oid is None


async def test_table_info_rls_flag_missing_tables_and_no_key(db: Db, conn: Any) -> None:
    notes = await catalog.table_info(conn, "public", "notes")
    assert notes is not None and notes.rls_enabled and notes.pk == ("id",)
    assert [c.type_name for c in notes.columns] == ["int8", "uuid", "text", "text"]
    assert await catalog.table_info(conn, "public", "no_such_table") is None
    assert await catalog.table_info(conn, "no_such_schema", "notes") is None
    assert await catalog.table_info(conn, "public", "NOTES") is None  # names are exact
    keyless = fresh("keyless")
    db.execute(f"create table {keyless}(a int, b text)")
    info = await catalog.table_info(conn, "public", keyless)
    assert info is not None and info.pk == () and not any(c.is_pk for c in info.columns)
    view = fresh("view")
    db.execute(f"create view {view} as select 1 as x")
    assert await catalog.table_info(conn, "public", view) is None  # not a table


# --- roles and column privileges (protocol.md §6.3, §6.6, §6.8, §7.2) -----------------------------


async def test_role_exists(conn: Any) -> None:
    assert await catalog.role_exists(conn, "authenticated")
    assert await catalog.role_exists(conn, "service_role")
    assert not await catalog.role_exists(conn, "Authenticated")  # used verbatim
    assert not await catalog.role_exists(conn, "no_such_role")
    assert not await catalog.role_exists(conn, "")


async def test_selectable_columns_follow_table_and_column_grants(db: Db, conn: Any) -> None:
    name = fresh("secrets")
    db.execute(f"create table {name}(id int primary key, title text, secret text, dropped int)")
    db.execute(f"alter table {name} drop column dropped")
    db.execute(f"grant select (id, title) on {name} to anon")
    db.execute(f"grant select on {name} to authenticated")
    relid = db.execute(f"select '{name}'::regclass::oid")[0][0]

    assert await catalog.selectable_columns(conn, "anon", relid) == {"id", "title"}
    assert await catalog.selectable_columns(conn, "authenticated", relid) == {"id", "title", "secret"}
    assert await catalog.selectable_columns(conn, "service_role", relid) == frozenset()
    assert await catalog.selectable_columns(conn, "no_such_role", relid) == frozenset()
    assert await catalog.selectable_columns(conn, "anon", 4_000_000_000) == frozenset()
    # a superuser may select everything
    assert await catalog.selectable_columns(conn, "postgres", relid) == {"id", "title", "secret"}


# --- CatalogCache ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cache_keeps_table_info_until_invalidated(db: Db, conn: Any) -> None:
    name = fresh("cached")
    db.execute(f"create table {name}(id int primary key)")
    cache = CatalogCache(max_age=3600)
    first = await cache.table_info(conn, "public", name)
    assert first is not None and [c.name for c in first.columns] == ["id"]

    db.execute(f"alter table {name} add column extra text")
    assert await cache.table_info(conn, "public", name) is first  # still cached
    cache.invalidate(first.relid + 1)  # another table: no effect
    assert await cache.table_info(conn, "public", name) is first

    cache.invalidate(first.relid)  # as on a pgoutput Relation message for this table
    second = await cache.table_info(conn, "public", name)
    assert second is not None and [c.name for c in second.columns] == ["id", "extra"]


async def test_cache_entries_expire_after_max_age(db: Db, conn: Any) -> None:
    name = fresh("aging")
    db.execute(f"create table {name}(id int primary key)")
    clock = FakeClock()
    cache = CatalogCache(max_age=30, clock=clock)
    relid = db.execute(f"select '{name}'::regclass::oid")[0][0]
    assert await cache.selectable_columns(conn, "anon", relid) == frozenset()
    assert not (await cache.table_info(conn, "public", name)).rls_enabled  # type: ignore[union-attr]

    # Neither a GRANT nor enabling RLS is announced by a Relation message we rely on.
    db.execute(f"grant select on {name} to anon")
    db.execute(f"alter table {name} enable row level security")
    clock.now += 29
    assert await cache.selectable_columns(conn, "anon", relid) == frozenset()
    clock.now += 2
    assert await cache.selectable_columns(conn, "anon", relid) == {"id"}
    assert (await cache.table_info(conn, "public", name)).rls_enabled  # type: ignore[union-attr]


async def test_cache_does_not_keep_missing_tables_or_stale_publications(db: Db, conn: Any) -> None:
    cache = CatalogCache(max_age=3600)
    name = fresh("later")
    assert await cache.table_info(conn, "public", name) is None
    db.execute(f"create table {name}(id int primary key)")
    assert await cache.table_info(conn, "public", name) is not None

    db.execute(f"drop publication if exists {PUB}")
    db.execute(f"create publication {PUB}")
    assert await cache.publication_tables(conn, PUB) == []
    db.execute(f"alter publication {PUB} add table {name}")
    # subscribable at once after ALTER PUBLICATION (publication_max_age defaults to 0)
    assert await cache.publication_tables(conn, PUB) == [("public", name)]


async def test_cache_invalidate_all_and_privileges_per_relid(db: Db, conn: Any) -> None:
    name = fresh("privs")
    db.execute(f"create table {name}(id int primary key, note text)")
    relid = db.execute(f"select '{name}'::regclass::oid")[0][0]
    cache = CatalogCache(max_age=3600)
    assert await cache.selectable_columns(conn, "anon", relid) == frozenset()
    assert not await cache.role_exists(conn, "rc_late_role")
    db.execute(f"grant select (note) on {name} to anon")
    db.execute("drop role if exists rc_late_role")
    db.execute("create role rc_late_role nologin")
    try:
        assert await cache.selectable_columns(conn, "anon", relid) == frozenset()
        cache.invalidate(relid)
        assert await cache.selectable_columns(conn, "anon", relid) == {"note"}
        assert not await cache.role_exists(conn, "rc_late_role")
        cache.invalidate()
        assert await cache.role_exists(conn, "rc_late_role")
    finally:
        db.execute("drop role rc_late_role")


async def test_cache_shares_one_load_between_concurrent_callers(db: Db, conn: Any) -> None:
    cache = CatalogCache(max_age=3600)
    results = await asyncio.gather(*(cache.table_info(conn, "public", "notes") for _ in range(10)))
    assert results[0] is not None
    assert all(r is results[0] for r in results)


async def test_cache_does_not_keep_a_load_that_overlapped_an_invalidation(db: Db) -> None:
    async with await CountingConnection.connect(db.dsn, autocommit=True) as conn:
        cache = CatalogCache(max_age=3600)
        conn.gate, conn.waiting = asyncio.Event(), asyncio.Event()
        loading = asyncio.ensure_future(cache.table_info(conn, "public", "notes"))
        await asyncio.wait_for(conn.waiting.wait(), 5)  # the query is in flight
        cache.invalidate()  # e.g. a Relation message arrives meanwhile
        conn.gate.set()
        info = await loading
        assert info is not None and info.name == "notes"
        before = conn.statements
        await cache.table_info(conn, "public", "notes")
        assert conn.statements == before + 1  # loaded again, the overlapping result was not kept
        await cache.table_info(conn, "public", "notes")
        assert conn.statements == before + 1  # and this one is


# --- cohort_key ----------------------------------------------------------------------------------------


def test_cohort_key_is_canonical() -> None:
    a = {"role": "authenticated", "sub": "x", "app": {"b": 1, "a": [1, 2]}}
    b = {"app": {"a": [1, 2], "b": 1}, "sub": "x", "role": "authenticated"}
    assert cohort_key(a) == cohort_key(b)
    assert cohort_key(a) != cohort_key({**a, "sub": "y"})
    assert cohort_key(a) != cohort_key({**a, "app": {"b": 1, "a": [2, 1]}})  # list order counts
    assert " " not in cohort_key(a)


# --- RLS (protocol.md §6.6, checklist 94) -----------------------------------------------------------


async def notes_table(conn: Any) -> TableInfo:
    info = await catalog.table_info(conn, "public", "notes")
    assert info is not None
    return info


def expected_notes(ids: list[int], claims: dict[str, Any]) -> set[int]:
    """Indexes into ``ids`` of rows the two policies let ``claims`` see (a model of them)."""
    teams = set(claims.get("teams", ()))
    return {
        i for i, note_id in enumerate(ids)
        if 1 <= note_id <= NOTE_ROWS
        and (str(note_owner(note_id)) == claims.get("sub") or note_team(note_id) in teams)
    }


async def test_each_user_sees_only_their_rows_in_one_call(db: Db) -> None:
    ids = [((i * 37) % (NOTE_ROWS + 10)) + 1 for i in range(100)]  # includes never-inserted ids
    assert any(i > NOTE_ROWS for i in ids) and len(set(ids)) == 100
    cohorts = [user_claims(i) for i in range(len(USERS))]
    async with await CountingConnection.connect(db.dsn, autocommit=True) as conn:
        table = await notes_table(conn)
        conn.statements = 0
        result = await RlsChecker().visible(conn, table, [[str(i)] for i in ids], cohorts)
        assert conn.statements == 1  # one round trip for the whole batch and every cohort
    for claims, seen in zip(cohorts, result, strict=True):
        assert seen == expected_notes(ids, claims)
        assert seen  # the model is not vacuous: every user owns or shares some of the batch
    # and they really differ between users
    assert len({frozenset(s) for s in result}) == len(USERS)


async def test_service_role_sees_all_and_anon_nothing(conn: Any) -> None:
    ids = list(range(1, 101))
    result = await RlsChecker().visible(
        conn, await notes_table(conn), [[str(i)] for i in ids],
        [{"role": "service_role"}, {"role": "anon", "sub": str(USERS[0])}],
    )
    assert result == [set(range(100)), set()]


async def test_missing_role_sees_nothing_without_breaking_others(
    conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ids = list(range(1, 51))
    cohorts = [
        user_claims(0),
        {"role": "no_such_role", "sub": str(USERS[1])},
        {"sub": str(USERS[1])},  # no role claim at all
        {"role": "none"},  # would mean "back to the session user" if ever set
        {"role": "authenticated", "sub": "not-a-uuid"},  # the policy's cast fails in the DB
        {"role": "service_role"},
        user_claims(1),
    ]
    checker = RlsChecker()
    with caplog.at_level(logging.WARNING, logger="realtime_channels.cdc.rls"):
        result = await checker.visible(conn, await notes_table(conn), [[str(i)] for i in ids], cohorts)
        again = await checker.visible(conn, await notes_table(conn), [[str(i)] for i in ids], cohorts)
    assert result == again
    assert result[0] == expected_notes(ids, cohorts[0])
    assert result[1] == result[2] == result[3] == result[4] == set()
    assert result[5] == set(range(50))
    assert result[6] == expected_notes(ids, cohorts[6])
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no_such_role" in m for m in messages) == 1  # logged once, not per call
    assert sum("not-a-uuid" in m for m in messages) == 1
    assert len(messages) == 4


async def test_claims_jsonb_cannot_hold_see_nothing_without_breaking_others(conn: Any) -> None:
    ids = list(range(1, 21))
    result = await RlsChecker().visible(
        conn, await notes_table(conn), [[str(i)] for i in ids],
        [
            {"role": "service_role", "name": "nul\x00byte"},  # jsonb rejects NUL
            {"role": "service_role", "name": "backslash \\u0000 is fine"},
            user_claims(4),
        ],
    )
    assert result == [set(), set(range(20)), expected_notes(ids, user_claims(4))]


async def test_role_without_select_privilege_sees_nothing(db: Db, conn: Any) -> None:
    name = fresh("private")
    db.execute(f"create table {name}(id int primary key)")
    db.execute(f"insert into {name} values (1), (2)")
    db.execute(f"grant select on {name} to authenticated")
    table = await catalog.table_info(conn, "public", name)
    assert table is not None and not table.rls_enabled
    result = await RlsChecker().visible(
        conn, table, [["1"], ["2"], ["3"]], [{"role": "anon"}, {"role": "authenticated"}]
    )
    assert result == [set(), {0, 1}]


async def test_rows_deleted_after_the_change_are_invisible(db: Db, conn: Any) -> None:
    name = fresh("gone")
    db.execute(f"create table {name}(id int primary key, owner uuid)")
    db.execute(f"alter table {name} enable row level security")
    db.execute(f"create policy mine on {name} for select to authenticated using (owner = auth.uid())")
    db.execute(f"grant select on {name} to authenticated, service_role")
    db.execute(f"insert into {name} select g, %s from generate_series(1, 10) g", (str(USERS[0]),))
    table = await catalog.table_info(conn, "public", name)
    assert table is not None
    rows = [[str(i)] for i in range(1, 11)]
    cohorts = [user_claims(0), {"role": "service_role"}]
    checker = RlsChecker()
    assert await checker.visible(conn, table, rows, cohorts) == [set(range(10))] * 2
    # the current state counts: deleted rows and rows whose owner changed are no longer visible
    db.execute(f"delete from {name} where id in (2, 4)")
    db.execute(f"update {name} set owner = %s where id = 7", (str(USERS[1]),))
    assert await checker.visible(conn, table, rows, cohorts) == [
        set(range(10)) - {1, 3, 6},
        set(range(10)) - {1, 3},
    ]


async def test_composite_primary_key(db: Db, conn: Any) -> None:
    name = fresh("tenanted")
    db.execute(f"create table {name}(seq int8, tenant text, body text, primary key (tenant, seq))")
    db.execute(f"alter table {name} enable row level security")
    db.execute(
        f"create policy by_tenant on {name} for select to authenticated"
        " using (tenant = auth.jwt() ->> 'tenant')"
    )
    db.execute(f"grant select on {name} to authenticated")
    db.execute(
        f"insert into {name} select g, t, 'x' from generate_series(1, 5) g, unnest(array['a', 'b b', 'c,\"d']) t"
    )
    table = await catalog.table_info(conn, "public", name)
    assert table is not None and table.pk == ("tenant", "seq")
    keys = [("a", 1), ("b b", 1), ("c,\"d", 5), ("a", 9), ("b b", 5), ("zz", 1), ("c,\"d", 2)]
    result = await RlsChecker().visible(
        conn, table, [[t, str(s)] for t, s in keys],
        [{"role": "authenticated", "tenant": t} for t in ("a", "b b", "c,\"d", "nobody")],
    )
    assert result == [{0}, {1, 4}, {2, 6}, set()]


async def test_text_uuid_and_awkward_key_types_cast_back_exactly(db: Db, conn: Any) -> None:
    name = fresh("keys")
    # bit(3) and char(4) would truncate if cast to bit/char without a length; timestamptz text
    # is in UTC (walsender settings) while the checking session runs in Asia/Kolkata.
    db.execute(
        f"create table {name}(u uuid, s text, c char(4), b bit(3), ts timestamptz, n numeric,"
        " primary key (u, s, c, b, ts, n))"
    )
    db.execute(f"grant select on {name} to anon")
    db.execute(
        f"insert into {name} values"
        " ('00000000-0000-0000-0000-000000000001', 'plain', 'ab', B'101', '2024-05-06 07:08:09.123456+00', 1.50),"
        " ('00000000-0000-0000-0000-000000000002', 'quote''s {x,y} \"z\" ∑', 'abcd', B'011', '1999-12-31 23:59:59+05', -0.000001),"
        " ('00000000-0000-0000-0000-000000000003', '', 'a', B'000', 'infinity', 'NaN')"
    )
    # concat() renders through each type's output function, as pgoutput does (char keeps its
    # padding, which a ::text cast would strip).
    text_rows = db.execute(
        f"select concat(u), concat(s), concat(c), concat(b), concat(ts), concat(n) from {name} order by u"
    )
    assert text_rows[0][2] == "ab  "
    assert [r[4] for r in text_rows][:2] == ["2024-05-06 07:08:09.123456+00", "1999-12-31 18:59:59+00"]
    near_misses = [
        [text_rows[0][0], "plain", "ab", "10", text_rows[0][4], "1.5"],  # bit(2) ≠ bit(3)
        [text_rows[0][0], "plain", "ab", "101", "2024-05-06 07:08:09.123457+00", "1.5"],
        [text_rows[0][0], "Plain", "ab", "101", text_rows[0][4], "1.5"],
        [text_rows[2][0], "", "b", "000", "infinity", "NaN"],
    ]
    table = await catalog.table_info(conn, "public", name)
    assert table is not None
    rows = [list(r) for r in text_rows] + near_misses
    result = await RlsChecker().visible(conn, table, rows, [{"role": "anon"}])
    assert result == [{0, 1, 2}]


async def test_identical_cohorts_share_a_check_and_answers_are_per_cohort(conn: Any) -> None:
    ids = list(range(1, 31))
    same_a = user_claims(2)
    same_b = dict(reversed(list(user_claims(2).items())))  # same claims, other key order
    result = await RlsChecker().visible(
        conn, await notes_table(conn), [[str(i)] for i in ids], [same_a, user_claims(3), same_b]
    )
    assert result[0] == result[2] == expected_notes(ids, same_a)
    assert result[1] == expected_notes(ids, user_claims(3))
    result[0].add(999)  # each cohort gets its own set
    assert 999 not in result[2]


async def test_empty_inputs_and_bad_rows(db: Db, conn: Any) -> None:
    table = await notes_table(conn)
    checker = RlsChecker()
    assert await checker.visible(conn, table, [["1"]], []) == []
    assert await checker.visible(conn, table, [], [user_claims(0), user_claims(1)]) == [set(), set()]
    keyless = fresh("nokey")
    db.execute(f"create table {keyless}(a int)")
    info = await catalog.table_info(conn, "public", keyless)
    assert info is not None
    assert await checker.visible(conn, info, [[]], [{"role": "service_role"}]) == [set()]
    with pytest.raises(ValueError):
        await checker.visible(conn, table, [["1", "2"]], [user_claims(0)])


async def test_dropped_table_sees_nothing(db: Db, conn: Any) -> None:
    name = fresh("dropped")
    db.execute(f"create table {name}(id int primary key)")
    table = await catalog.table_info(conn, "public", name)
    assert table is not None
    db.execute(f"drop table {name}")
    assert await RlsChecker().visible(conn, table, [["1"]], [{"role": "service_role"}]) == [set()]


async def test_settings_do_not_leak_into_the_session(db: Db) -> None:
    async with await psycopg.AsyncConnection.connect(db.dsn, autocommit=True) as conn:
        table = await notes_table(conn)
        await RlsChecker().visible(conn, table, [["1"]], [user_claims(0), {"role": "anon"}])
        cur = await conn.execute(
            "select current_user::text, coalesce(current_setting('request.jwt.claims', true), ''),"
            " coalesce(current_setting('request.jwt.claim.sub', true), '')"
        )
        assert await cur.fetchone() == ("postgres", "", "")

    # A connection already inside a transaction: the caller's own settings survive, ours go,
    # and the transaction stays usable.
    async with await psycopg.AsyncConnection.connect(db.dsn) as conn:
        table = await notes_table(conn)
        await conn.execute("select set_config('request.jwt.claims', '{\"mine\":1}', true)")
        result = await RlsChecker().visible(conn, table, [[str(i)] for i in range(1, 21)], [user_claims(0)])
        assert result == [expected_notes(list(range(1, 21)), user_claims(0))]
        cur = await conn.execute("select current_user::text, current_setting('request.jwt.claims', true)")
        assert await cur.fetchone() == ("postgres", '{"mine":1}')
        await conn.rollback()


async def test_visible_batch_function_resets_role_itself(db: Db) -> None:
    # Even for a caller that keeps its transaction (no rollback), the role does not outlive
    # the call; the claims stay transaction-local.
    async with await psycopg.AsyncConnection.connect(db.dsn) as conn:
        cur = await conn.execute(
            "select cohort, visible, error from realtime.rc_visible_batch("
            "'notes'::regclass, array['id'], array['1', '2', '3'], %s::jsonb)",
            ("[" + cohort_key(user_claims(1)) + ', {"role": "service_role"}]',),
        )
        rows = await cur.fetchall()
        assert rows == [(0, sorted(expected_notes([1, 2, 3], user_claims(1))), None), (1, [0, 1, 2], None)]
        cur = await conn.execute("select current_user::text")
        assert await cur.fetchone() == ("postgres",)
        await conn.commit()
        cur = await conn.execute("select coalesce(current_setting('request.jwt.claims', true), '')")
        assert await cur.fetchone() == ("",)


async def test_install_auth_helpers_keeps_existing_functions(pg_cluster: Any) -> None:
    name = "rc_test_catalog_rls_auth"
    dsn = create_database(pg_cluster, name)
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("create schema auth")
            await conn.execute("create function auth.role() returns text language sql as $$ select 'custom' $$")
            await sql.install_auth_helpers(conn)
            await sql.install(conn)
            claims = {"role": "authenticated", "sub": str(USERS[3]), "teams": ["t9"]}
            cur = await conn.execute(
                "select set_config('request.jwt.claims', %s, true), auth.uid(), auth.role(), auth.jwt()",
                (cohort_key(claims),),
            )
            row = await cur.fetchone()
            assert row is not None
            assert (row[1], row[2], row[3]) == (USERS[3], "custom", claims)
            # outside any claims, the helpers answer null rather than failing
            cur = await conn.execute("select auth.uid(), auth.jwt()")
            assert await cur.fetchone() == (None, None)
    finally:
        drop_database(pg_cluster, name)
