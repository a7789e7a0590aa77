"""Row-level security is judged on each change's own row image (protocol.md §6.6).

A change to a table with RLS reaches a subscriber only when the table's policies, evaluated as
the subscriber's role and claims, admit the row image the change carries — not the row as it is
when the check runs.  So a commit that is not yet visible to new snapshots is never reported as
"invisible", a row reassigned or deleted right after a change is judged as it was in that change,
and an UPDATE's old image is shown only to those whose policies admit that old image.

Absence is proven with barriers: changes reach a socket in commit order (§6.9), so once a row
committed later has arrived, anything earlier that was going to arrive has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from pgcluster import PgCluster
from realtime_channels.cdc.replication import ReplicationReader
from support import make_token
from rawclient import V1, V2, RawClient, event_is, open_client, unique_topic

SUBSCRIBED = "Subscribed to PostgreSQL"
CHANGE_WAIT = 30.0
A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
B = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"

#: single-row transactions per table in the loss test
LOSS_ROWS = 1000
#: seconds the writer takes for all of them (paced, as an application writes)
LOSS_SECONDS = 8.0


def binding(table: str, event: str = "*", **extra: Any) -> dict[str, Any]:
    return {"event": event, "schema": "public", "table": table, **extra}


async def subscribe(c: RawClient, topic: str, bindings: list[dict[str, Any]], token: str) -> None:
    reply = await c.join(topic, {"postgres_changes": bindings}, access_token=token)
    assert reply.payload["status"] == "ok", reply.value
    frame = await c.expect(event_is("system", topic), CHANGE_WAIT)
    assert frame.payload["status"] == "ok" and frame.payload["message"] == SUBSCRIBED, frame.value


def data_of(frame: Any) -> dict[str, Any]:
    data = frame.payload["data"]
    assert isinstance(data, dict)
    return data


def ident(data: dict[str, Any]) -> Any:
    return (data.get("record") or data.get("old_record") or {}).get("id")


async def collect_until(c: RawClient, topic: str, kind: str, row: Any) -> list[dict[str, Any]]:
    """Every change of ``topic`` up to and including (kind, row)."""
    out: list[dict[str, Any]] = []
    while True:
        data = data_of(await c.expect(event_is("postgres_changes", topic), CHANGE_WAIT))
        out.append(data)
        if data["type"] == kind and ident(data) == row:
            return out


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Any]:
    """This module's own cluster, with a synchronous standby (``rc_standby``) for the sessions
    that ask for ``synchronous_commit = on``: their commits are flushed and streamed to logical
    walsenders, then stay invisible to new snapshots until the standby confirms them — the
    window in which a check of the table's current state misses the row, held open on purpose.
    Every other session commits with ``synchronous_commit = local`` and never waits."""
    cluster = PgCluster(extra_conf={"synchronous_standby_names": "'rc_standby'", "synchronous_commit": "local"})
    cluster.init()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def cpu_load() -> Iterator[None]:
    """Keep every core busy for the duration of a test (bounded: the burners stop themselves)."""
    code = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end:\n    pass\n"
    burners = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for p in burners:
            p.kill()
            p.wait()


@contextlib.asynccontextmanager
async def standby(dsn: str, tables: list[str]) -> AsyncIterator[None]:
    """A logical walsender named ``rc_standby`` that confirms what it received every 2 ms: the
    synchronous standby of the writer's commits."""
    admin = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with admin:
        await admin.execute("drop publication if exists rc_standby_pub")
        await admin.execute("create publication rc_standby_pub for table " + ", ".join(tables))

        async def nothing(txn: Any) -> None:
            return None

        reader = ReplicationReader(
            f"{dsn}?application_name=rc_standby", slot="rc_standby_slot", publication="rc_standby_pub",
            on_transaction=nothing, status_interval=0.002,
        )
        task = asyncio.create_task(reader.run())
        try:
            assert await reader.wait_streaming(CHANGE_WAIT), reader.detail
            # the walsender becomes the synchronous standby once it has caught up
            deadline = time.monotonic() + CHANGE_WAIT
            while True:
                row = await (await admin.execute(
                    "select sync_state from pg_stat_replication where application_name = 'rc_standby'"
                )).fetchone()
                if row is not None and row[0] == "sync":
                    break
                assert time.monotonic() < deadline, f"rc_standby never became synchronous: {row}"
                await asyncio.sleep(0.01)  # polling a condition, bounded by the deadline
            yield
        finally:
            await reader.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            deadline = time.monotonic() + CHANGE_WAIT
            while (await (await admin.execute(
                "select 1 from pg_replication_slots where slot_name = 'rc_standby_slot' and active"
            )).fetchone()) is not None:
                assert time.monotonic() < deadline, "the standby's walsender never let go of its slot"
                await asyncio.sleep(0.01)  # polling a condition, bounded by the deadline
            await admin.execute("select pg_drop_replication_slot('rc_standby_slot')")


def write_paced(dsn: str, statements: list[tuple[str, tuple[Any, ...]]], seconds: float) -> None:
    """Run each statement as its own transaction, committed with the synchronous standby,
    spread evenly over ``seconds``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set synchronous_commit = on")
        start = time.monotonic()
        for i, (sql, params) in enumerate(statements):
            conn.execute(sql, params)
            ahead = start + seconds * (i + 1) / len(statements) - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing the writer, not waiting for a condition


# --- no change is lost because the check ran before its commit was visible -------------------


async def test_no_insert_or_update_lost_on_rls_tables_under_load(cdc: Any, cpu_load: None) -> None:
    """Thousands of paced single-row transactions on RLS tables and a twin without RLS, each
    commit held invisible until a synchronous standby confirms it, with every core busy: the
    RLS subscriber receives every INSERT, and every UPDATE whose new version is the one the
    policy admits (the old one it does not)."""
    rls = cdc.table("id int primary key, shown bool not null, body text", rls=True)
    cdc.execute(f"create policy all_rows on {rls} for select to authenticated using (true)")
    flip = cdc.table("id int primary key, shown bool not null, body text", rls=True)
    cdc.execute(f"create policy shown_only on {flip} for select to authenticated using (shown)")
    plain = cdc.table("id int primary key, shown bool not null, body text")
    token = make_token("authenticated", sub=A)
    t_rls, t_flip, t_plain = unique_topic("rls"), unique_topic("flip"), unique_topic("plain")

    # rows of `flip` start hidden; their UPDATE makes them visible
    cdc.execute(f"insert into {flip} select g, false, 'x' from generate_series(1, %s) g", (LOSS_ROWS,))
    statements: list[tuple[str, tuple[Any, ...]]] = []
    for i in range(1, LOSS_ROWS + 1):
        statements.append((f"insert into {rls} values (%s, true, 'r')", (i,)))
        statements.append((f"update {flip} set shown = true where id = %s", (i,)))
        statements.append((f"insert into {plain} values (%s, true, 'p')", (i,)))
    statements.append((f"insert into {plain} values (%s, true, 'end')", (0,)))  # the barrier

    async with standby(cdc.dsn, [rls, flip, plain]), open_client(cdc.server, V2) as c:
        await subscribe(c, t_rls, [binding(rls, "INSERT")], token)
        await subscribe(c, t_flip, [binding(flip, "UPDATE")], token)
        await subscribe(c, t_plain, [binding(plain, "INSERT")], token)
        await asyncio.to_thread(write_paced, cdc.dsn, statements, LOSS_SECONDS)
        plain_got = await collect_until(c, t_plain, "INSERT", 0)
        # The plain table's barrier was committed last: every earlier change has been routed.
        frames = [f for f in c.received if f.event == "postgres_changes"]
    rls_ids = [ident(data_of(f)) for f in frames if f.topic == t_rls]
    flip_ids = [ident(data_of(f)) for f in frames if f.topic == t_flip]
    expected = list(range(1, LOSS_ROWS + 1))
    assert [ident(d) for d in plain_got] == [*expected, 0]
    missed_insert = sorted(set(expected) - set(rls_ids))
    missed_update = sorted(set(expected) - set(flip_ids))
    print(f"missed INSERTs {len(missed_insert)}/{LOSS_ROWS}, UPDATEs {len(missed_update)}/{LOSS_ROWS}")
    assert (len(missed_insert), len(missed_update)) == (0, 0), (missed_insert[:20], missed_update[:20])
    assert rls_ids == expected and flip_ids == expected  # in order, once each


# --- each change is judged by its own image -----------------------------------------------------


def owner_table(cdc: Any) -> str:
    table = cdc.table("id int primary key, owner uuid not null, body text", identity_full=True, rls=True)
    cdc.execute(f"create policy own on {table} for select to authenticated using (owner = auth.uid())")
    return table


async def test_a_row_reassigned_at_once_reaches_each_owner_with_only_its_own_image(cdc: Any) -> None:
    """A row inserted for a and reassigned to b straight after: a gets the INSERT (a's image),
    b gets the UPDATE with its new image, and the old image (a's text) only as the key."""
    table = owner_table(cdc)
    ta, tb, ts = unique_topic("a"), unique_topic("b"), unique_topic("svc")
    rounds = 20
    async with open_client(cdc.server, V2) as c:
        await subscribe(c, ta, [binding(table)], make_token("authenticated", sub=A))
        await subscribe(c, tb, [binding(table)], make_token("authenticated", sub=B))
        await subscribe(c, ts, [binding(table)], make_token("service_role"))
        with psycopg.connect(cdc.dsn, autocommit=True) as w:
            for i in range(1, rounds + 1):
                w.execute(f"insert into {table} values (%s, %s, %s)", (i, A, f"a-private-{i}"))
                w.execute(f"update {table} set owner = %s, body = %s where id = %s", (B, f"b-{i}", i))
            w.execute(f"delete from {table} where id = 1")  # the barrier: it goes to everyone
        got_a = await collect_until(c, ta, "DELETE", 1)
        got_b = await collect_until(c, tb, "DELETE", 1)
        got_s = await collect_until(c, ts, "DELETE", 1)
    ids = list(range(1, rounds + 1))
    assert [(d["type"], ident(d)) for d in got_a] == [("INSERT", i) for i in ids] + [("DELETE", 1)]
    assert [(d["type"], ident(d)) for d in got_b] == [("UPDATE", i) for i in ids] + [("DELETE", 1)]
    assert len(got_s) == 2 * rounds + 1
    for d in got_a[:-1]:
        assert d["record"] == {"id": d["record"]["id"], "owner": A, "body": f"a-private-{d['record']['id']}"}
    for d in got_b[:-1]:
        i = d["record"]["id"]
        assert d["record"] == {"id": i, "owner": B, "body": f"b-{i}"}
        assert d["old_record"] == {"id": i}, d  # a's image is not b's to see
    text = repr(got_b)
    assert "a-private" not in text
    # service_role bypasses RLS: it sees both images in full
    updates = [d for d in got_s if d["type"] == "UPDATE"]
    assert updates[0]["old_record"] == {"id": 1, "owner": A, "body": "a-private-1"}


async def test_old_image_is_shown_only_where_the_policies_admit_it(cdc: Any) -> None:
    """With replica identity full, an UPDATE visible to both owners' policies in its new image
    carries the full old image only for the subscriber whose policy admits the old image."""
    table = cdc.table("id int primary key, owner uuid not null, body text", identity_full=True, rls=True)
    cdc.execute(f"create policy own on {table} for select to authenticated using (owner = auth.uid())")
    cdc.execute(
        f"create policy public_rows on {table} for select to authenticated using (body like 'public%%')"
    )
    ta, tb = unique_topic("a"), unique_topic("b")
    async with open_client(cdc.server, V1) as c:
        await subscribe(c, ta, [binding(table, "UPDATE")], make_token("authenticated", sub=A))
        await subscribe(c, tb, [binding(table, "UPDATE")], make_token("authenticated", sub=B))
        with psycopg.connect(cdc.dsn, autocommit=True) as w:
            w.execute(f"insert into {table} values (1, %s, 'secret of a')", (A,))
            w.execute(f"update {table} set body = 'public now' where id = 1")
            w.execute(f"update {table} set body = 'public again' where id = 1")
        a1 = await collect_until(c, ta, "UPDATE", 1)
        b1 = await collect_until(c, tb, "UPDATE", 1)
        a2 = await collect_until(c, ta, "UPDATE", 1)
        b2 = await collect_until(c, tb, "UPDATE", 1)
    # first update: old image private to a
    assert a1[-1]["old_record"] == {"id": 1, "owner": A, "body": "secret of a"}
    assert b1[-1]["old_record"] == {"id": 1}
    assert b1[-1]["record"] == {"id": 1, "owner": A, "body": "public now"}
    # second update: the old image is public, so both see it
    assert a2[-1]["old_record"] == b2[-1]["old_record"] == {"id": 1, "owner": A, "body": "public now"}


async def test_rows_deleted_right_after_insert_still_reach_those_admitted(cdc: Any) -> None:
    table = owner_table(cdc)
    ta, tb, ts = unique_topic("a"), unique_topic("b"), unique_topic("svc")
    rounds = 20
    async with open_client(cdc.server, V2) as c:
        await subscribe(c, ta, [binding(table)], make_token("authenticated", sub=A))
        await subscribe(c, tb, [binding(table)], make_token("authenticated", sub=B))
        await subscribe(c, ts, [binding(table)], make_token("service_role"))
        with psycopg.connect(cdc.dsn, autocommit=True) as w:
            for i in range(1, rounds + 1):
                w.execute(f"insert into {table} values (%s, %s, 'short-lived')", (i, A))
                w.execute(f"delete from {table} where id = %s", (i,))
        got_a = await collect_until(c, ta, "DELETE", rounds)
        got_b = await collect_until(c, tb, "DELETE", rounds)
        got_s = await collect_until(c, ts, "DELETE", rounds)
    both = [x for i in range(1, rounds + 1) for x in (("INSERT", i), ("DELETE", i))]
    assert [(d["type"], ident(d)) for d in got_a] == both
    assert [(d["type"], ident(d)) for d in got_s] == both
    assert [(d["type"], ident(d)) for d in got_b] == [("DELETE", i) for i in range(1, rounds + 1)]
    assert all(d["old_record"] == {"id": ident(d)} for d in got_b)


async def test_policies_with_subqueries_see_the_changes_own_transaction(cdc: Any) -> None:
    """A policy reading another table (membership) sees what the change's own transaction wrote
    there: the check waits until that transaction is visible, never judges it early."""
    members = cdc.table("team text, member uuid", publish=False)
    cdc.execute(f"grant select on {members} to authenticated")
    table = cdc.table("id int primary key, team text not null", rls=True)
    cdc.execute(
        f"create policy team_members on {table} for select to authenticated using ("
        f"exists (select 1 from {members} m where m.team = {table}.team and m.member = auth.uid()))"
    )
    ta = unique_topic("a")
    rounds = 50
    async with standby(cdc.dsn, [members, table]), open_client(cdc.server, V2) as c:
        await subscribe(c, ta, [binding(table, "INSERT")], make_token("authenticated", sub=A))

        def write() -> None:
            with psycopg.connect(cdc.dsn, autocommit=True) as w:
                w.execute("set synchronous_commit = on")  # each commit waits for the standby
                for i in range(1, rounds + 1):
                    with w.transaction():
                        w.execute(f"insert into {members} values (%s, %s)", (f"team{i}", A))
                        w.execute(f"insert into {table} values (%s, %s)", (i, f"team{i}"))
                    # a team a is not in: never shown; the next round's row is the barrier
                    w.execute(f"insert into {table} values (%s, 'nobody')", (1000 + i,))

        await asyncio.to_thread(write)
        got = await collect_until(c, ta, "INSERT", rounds)
    assert [ident(d) for d in got] == list(range(1, rounds + 1))
