"""``realtime.rc_visible_images`` against PostgreSQL itself (protocol.md §6.6).

For each set of policies, every row of a table is judged twice: by PostgreSQL, selecting the
table as the cohort's role with its claims, and by our function, over the rows' images (their
text values, as pgoutput sends them).  The two must agree for every cohort: permissive policies
OR-ed, restrictive ones AND-ed, policies for other commands or roles ignored, owners, BYPASSRLS,
FORCE ROW LEVEL SECURITY, subqueries naming the table, auth.uid()/auth.jwt().
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import psycopg
import pytest
from pgcluster import create_database, drop_database

from realtime_channels.cdc import catalog, sql
from realtime_channels.cdc.rls import RlsChecker

DBNAME = "rc_rls_images"
USERS = [str(uuid.UUID(int=0x2000 + i)) for i in range(4)]

SETUP_SQL = """
grant anon, authenticated, service_role to current_user;
do $$ begin
    if not exists (select from pg_roles where rolname = 'rc_owner') then
        create role rc_owner nologin;
    end if;
    if not exists (select from pg_roles where rolname = 'rc_editor') then
        create role rc_editor nologin in role authenticated;
    end if;
end $$;
grant rc_owner, rc_editor to current_user;
grant usage on schema public to anon, authenticated, service_role, rc_owner, rc_editor;
"""

#: (name, statements after the table exists) — each a different combination of policies
CASES: list[tuple[str, list[str]]] = [
    ("no policy: nothing visible", []),
    ("one permissive", ["create policy p on {t} for select to authenticated using (owner = auth.uid())"]),
    ("permissives are OR-ed", [
        "create policy p1 on {t} for select to authenticated using (owner = auth.uid())",
        "create policy p2 on {t} for select to authenticated using (team = auth.jwt() ->> 'team')",
    ]),
    ("a restrictive is AND-ed", [
        "create policy p1 on {t} for select to authenticated using (owner = auth.uid())",
        "create policy p2 on {t} for select to authenticated using (team = auth.jwt() ->> 'team')",
        "create policy r on {t} as restrictive for select to authenticated using (not hidden)",
    ]),
    ("restrictive alone admits nothing", [
        "create policy r on {t} as restrictive for select to authenticated using (true)",
    ]),
    ("policies for other commands and roles are ignored", [
        "create policy ins on {t} for insert to authenticated with check (true)",
        "create policy upd on {t} for update to authenticated using (true)",
        "create policy other on {t} for select to anon using (true)",
        "create policy p on {t} for select to authenticated using (n > 2)",
    ]),
    ("FOR ALL and PUBLIC policies apply", [
        "create policy p on {t} using (team = 'red')",
    ]),
    ("a policy for a role the subscriber is a member of", [
        "create policy p on {t} for select to authenticated using (n % 2 = 0)",
        "create policy e on {t} for select to rc_editor using (team = 'blue')",
    ]),
    ("a subquery naming the table and a membership table", [
        "create policy p on {t} for select to authenticated using ("
        "exists (select 1 from {t}_members m where m.team = {t}.team and m.member = auth.uid()))",
    ]),
    ("owner without FORCE sees everything", [
        "alter table {t} owner to rc_owner",
        "create policy p on {t} for select using (false)",
    ]),
    ("owner with FORCE is subject to the policies", [
        "alter table {t} owner to rc_owner",
        "alter table {t} force row level security",
        "create policy p on {t} for select using (n = 1)",
    ]),
    ("casts, arrays, jsonb and functions in the expression", [
        "create policy p on {t} for select to authenticated using ("
        "tags && array['x'] or (meta ->> 'level')::int >= coalesce((auth.jwt() ->> 'level')::int, 99)"
        " or lower(team) = any (array(select jsonb_array_elements_text(auth.jwt() -> 'teams'))))",
    ]),
]

COHORTS: list[dict[str, Any]] = [
    {"role": "authenticated", "sub": USERS[0], "team": "red", "teams": ["blue"], "level": 2},
    {"role": "authenticated", "sub": USERS[1], "team": "blue", "teams": [], "level": 5},
    {"role": "rc_editor", "sub": USERS[2], "team": "green"},
    {"role": "anon"},
    {"role": "service_role"},
    {"role": "rc_owner"},
]


@pytest.fixture(scope="module")
def dsn(pg_cluster: Any) -> Iterator[str]:
    dsn = create_database(pg_cluster, DBNAME)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(SETUP_SQL)

    async def install() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await sql.install(conn)
            await sql.install_auth_helpers(conn)

    asyncio.run(install())
    try:
        yield dsn
    finally:
        drop_database(pg_cluster, DBNAME)


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, options="-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3"
    ) as c:
        yield c


def make_table(admin: psycopg.Connection[Any], statements: list[str]) -> str:
    t = f"img_{uuid.uuid4().hex[:8]}"
    admin.execute(
        f'create table {t} (id int primary key, owner uuid, team text, n int, hidden bool not null default false,'
        f' tags text[], meta jsonb, "Odd Name" text)'
    )
    admin.execute(f"create table {t}_members (team text, member uuid)")
    admin.execute(f"alter table {t} enable row level security")
    admin.execute(f"grant select on {t}, {t}_members to anon, authenticated, service_role, rc_owner, rc_editor")
    admin.execute(f"insert into {t}_members values ('red', %s), ('green', %s)", (USERS[1], USERS[2]))
    for i in range(1, 13):
        admin.execute(
            f"insert into {t} values (%s, %s, %s, %s, %s, %s, %s, %s)",
            (i, USERS[i % 3], ["red", "blue", "green"][i % 3], i, i % 4 == 0,
             ["x"] if i % 5 == 0 else ["y"], orjson.dumps({"level": i % 6}).decode(), f"odd {i}"),
        )
    for stmt in statements:
        admin.execute(stmt.format(t=t))
    return t


def postgres_sees(admin: psycopg.Connection[Any], table: str, claims: dict[str, Any]) -> set[int]:
    with admin.transaction():
        admin.execute("select set_config('role', %s, true), set_config('request.jwt.claims', %s, true),"
                      " set_config('request.jwt.claim.sub', %s, true)",
                      (claims["role"], orjson.dumps(claims).decode(), claims.get("sub", "")))
        rows = admin.execute(f"select id from {table}").fetchall()
        admin.execute("reset role")
    return {r[0] for r in rows}


@pytest.mark.parametrize("name,statements", CASES, ids=[c[0] for c in CASES])
async def test_images_are_judged_as_postgres_judges_the_rows(
    dsn: str, conn: Any, name: str, statements: list[str]
) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        table = make_table(admin, statements)
        expected = [postgres_sees(admin, table, c) for c in COHORTS]
        cur = admin.execute(f"select * from {table} order by id")
        columns = [d.name for d in cur.description or ()]
        # the text form of every value, as pgoutput sends it
        text = admin.execute(
            f"select array[{', '.join(f'{psycopg.sql.Identifier(c).as_string(admin)}::text' for c in columns)}]"
            f" from {table} order by id"
        ).fetchall()
    images = [list(r[0]) for r in text]
    info = await catalog.table_info(conn, "public", table)
    assert info is not None
    seen = await RlsChecker().visible_images(conn, info, None, columns, images, COHORTS)
    ids = [int(img[0]) for img in images]
    got = [{ids[i] for i in s} for s in seen]
    assert got == expected, name
    # the rows themselves play no part: with the table emptied the images are judged the same
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"delete from {table}")
    again = await RlsChecker().visible_images(conn, info, None, columns, images, COHORTS)
    assert again == seen


async def test_an_image_lacking_a_column_sees_nothing_and_says_why(dsn: str, conn: Any, caplog: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        table = make_table(admin, ["create policy p on {t} for select using (true)"])
    info = await catalog.table_info(conn, "public", table)
    assert info is not None
    seen = await RlsChecker().visible_images(conn, info, None, ["id", "owner"], [["1", USERS[0]]], COHORTS[:1])
    assert seen == [set()]
    assert "lacks some of its columns" in caplog.text


async def test_the_check_waits_for_the_changes_transaction(dsn: str, conn: Any) -> None:
    """A transaction still in progress is not visible: rc_wait_visible keeps waiting for it
    (here: until it commits), and answers true at once for one already committed."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        table = make_table(admin, [])
    async with await psycopg.AsyncConnection.connect(dsn) as writer:
        await writer.execute(f"insert into {table} (id) values (100)")
        xid = (await (await writer.execute("select pg_current_xact_id()::text::bigint % 4294967296")).fetchone())[0]
        waiting = asyncio.create_task(conn.execute("select realtime.rc_wait_visible(%s, 20000)", (xid,)))
        # the waiter is inside its loop (sleeping between snapshots) while the writer is open
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as probe:
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                row = await (await probe.execute(
                    "select wait_event from pg_stat_activity where pid = %s", (conn.info.backend_pid,)
                )).fetchone()
                if row == ("PgSleep",):
                    break
                assert asyncio.get_running_loop().time() < deadline, row
                await asyncio.sleep(0.01)  # polling a condition, bounded by the deadline
        assert not waiting.done()
        await writer.commit()
        row = await (await waiting).fetchone()
        assert row == (True,)
    row = await (await conn.execute("select realtime.rc_wait_visible(%s, 0)", (xid,))).fetchone()
    assert row == (True,)
