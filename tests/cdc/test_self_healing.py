"""A server that outlives its database's objects (docs/postgres.md "Self-healing"): when the
database is reset under it (``supabase db reset``: dropped and created again, then migrated) or
its publication is dropped, the server recreates its slot and publication, tells every
postgres_changes channel that changes may be missing, and goes on delivering — without a
restart or a rejoin — including database broadcasts (``realtime.messages`` migrated again)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pgcluster import create_database, drop_database, install_auth_helpers
from rawclient import V2, event_is, open_client, unique_topic
from support import make_token, start_server, wait_until

DB = "rc_self_healing"
PUB = "rc_pub_self_healing"
SLOT = "rc_slot_self_healing"
WAIT = 45.0  # the reader retries with back-off (up to 10 s) while the database is away
SUBSCRIBED = "Subscribed to PostgreSQL"
GAP = "ChangesGap: "

SCHEMA_SQL = f"""
grant usage on schema public to anon, authenticated, service_role;
create table public.todos (id int primary key, body text);
grant select on public.todos to anon, authenticated, service_role;
drop publication if exists {PUB};
create publication {PUB} for table public.todos;
"""


@pytest.fixture
def reset_db(pg_cluster: Any, tmp_path: Any) -> Iterator[tuple[Any, str]]:
    dsn = create_database(pg_cluster, DB)
    install_auth_helpers(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
    server = start_server(str(tmp_path), REALTIME_DATABASE_URL=dsn, REALTIME_PUBLICATION=PUB, REALTIME_SLOT_NAME=SLOT)
    try:
        yield server, dsn
    finally:
        server.stop()
        drop_database(pg_cluster, DB)


def reset(pg_cluster: Any, dsn: str) -> None:
    """``supabase db reset``: nobody may connect, everyone is disconnected, the database and its
    slots are dropped, then it is created and migrated again."""
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as admin:
        admin.execute(f'alter database "{DB}" with allow_connections false')
        admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (DB,))
    drop_database(pg_cluster, DB)
    create_database(pg_cluster, DB)
    install_auth_helpers(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)


async def join_todos(c: Any, topic: str) -> None:
    await c.join_ok(topic, {"postgres_changes": [{"event": "INSERT", "schema": "public", "table": "todos"}]},
                    access_token=make_token("authenticated", sub="u"))
    while True:
        frame = await c.expect(event_is("system", topic), WAIT)
        if frame.payload["message"] == SUBSCRIBED:
            return


async def next_row(c: Any, topic: str) -> Any:
    return (await c.expect(event_is("postgres_changes", topic), WAIT)).payload["data"]["record"]["id"]


async def test_a_database_reset_under_the_server_is_survived_without_a_rejoin(reset_db: Any, pg_cluster: Any) -> None:
    server, dsn = reset_db
    topic, bcast = unique_topic("healed"), unique_topic("healed-db")
    async with open_client(server, V2) as c:
        await join_todos(c, topic)
        await c.join_ok(bcast, {})
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into public.todos values (1, 'before')")
        assert await next_row(c, topic) == 1
        await asyncio.to_thread(reset, pg_cluster, dsn)
        gap = await c.expect(lambda f: f.event == "system" and f.topic == topic
                             and str(f.payload.get("message", "")).startswith(GAP), WAIT)
        assert gap.payload["status"] == "ok" and gap.payload["gap"] == {"missed": None}
        # the same channel receives the new database's changes
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into public.todos values (2, 'after')")
        assert await next_row(c, topic) == 2
        # and database broadcasts work again: realtime.messages was migrated anew
        sub = bcast.removeprefix("realtime:")

        def migrated() -> bool:
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute("select to_regprocedure('realtime.send(jsonb,text,text,boolean)')").fetchone()
            return row is not None and row[0] is not None

        await wait_until(migrated, WAIT, "realtime.send created again in the new database")
        frame = None
        for attempt in range(40):  # until the feed of realtime.messages streams again
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("select realtime.send(%s::jsonb, 'ping', %s, false)", (f'{{"n": {attempt}}}', sub))
            try:
                frame = await c.expect(lambda f: f.topic == bcast and f.event == "broadcast", 1.5)
                break
            except AssertionError:
                continue
        assert frame is not None, server.log()[-3000:]
    assert "Traceback" not in server.log()


async def test_a_dropped_publication_is_recreated_and_the_channel_is_told(reset_db: Any) -> None:
    server, dsn = reset_db
    topic = unique_topic("pubdrop")
    async with open_client(server, V2) as c:
        await join_todos(c, topic)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into public.todos values (1, 'a')")
            assert await next_row(c, topic) == 1
            conn.execute(f"drop publication {PUB}")
            conn.execute("insert into public.todos values (2, 'lost')")  # the stream fails on it
        gap = await c.expect(lambda f: f.event == "system" and f.topic == topic
                             and str(f.payload.get("message", "")).startswith(GAP), WAIT)
        assert gap.payload["status"] == "ok"
        with psycopg.connect(dsn, autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_publication where pubname = %s", (PUB,)).fetchone()
            assert exists is not None, "the server recreated its publication"
            conn.execute(f"alter publication {PUB} add table public.todos")
            conn.execute("insert into public.todos values (3, 'b')")
        assert await next_row(c, topic) == 3
