"""Snapshot, then stream (protocol.md §6.10) against a real PostgreSQL: a binding with
``snapshot: true`` first receives the rows that match it now — under the subscriber's RLS, column
privileges, ``select`` and filter — each as an INSERT, then ``Snapshot complete: <n> rows``, then
live changes; with writers committing throughout, no row is missed and none doubled.

Negative assertions use a barrier: a later change on the same socket (changes reach a socket in
commit order).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
from peers import NodePeer, node  # noqa: F401 - node is a fixture
from rawclient import V1, V2, Frame, RawClient, open_client, unique_topic
from feedservers import feed_server
from support import make_token

WAIT = 20.0
SUBSCRIBED = "Subscribed to PostgreSQL"
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


def binding(table: str, event: str = "*", **extra: Any) -> dict[str, Any]:
    return {"event": event, "schema": "public", "table": table, **extra}


async def frames_until(c: RawClient, topic: str, done: Any) -> list[Frame]:
    """The channel's system and postgres_changes frames up to the first for which ``done`` holds."""
    out: list[Frame] = []
    while True:
        frame = await c.expect(lambda f: f.topic == topic and f.event in ("system", "postgres_changes"), WAIT)
        out.append(frame)
        if done(frame):
            return out


def is_complete(frame: Frame) -> bool:
    return frame.event == "system" and str(frame.payload.get("message", "")).startswith("Snapshot complete")


def is_row(kind: str, ident: Any) -> Any:
    def check(frame: Frame) -> bool:
        if frame.event != "postgres_changes":
            return False
        data = frame.payload["data"]
        return data["type"] == kind and (data.get("record") or data.get("old_record"))["id"] == ident
    return check


def records(frames: list[Frame]) -> list[dict[str, Any]]:
    out = []
    for f in frames:
        if f.event == "postgres_changes":
            assert f.payload["data"]["type"] == "INSERT", f.value
            out.append(f.payload["data"]["record"])
    return out


@pytest.mark.parametrize("vsn", [V1, V2])
async def test_snapshot_sends_matching_rows_as_inserts_then_complete_then_live(cdc: Any, vsn: str) -> None:
    table = cdc.table("id int primary key, list_id int, body text")
    cdc.execute(f"insert into {table} values (1, 7, 'a'), (2, 8, 'b'), (3, 7, 'c'), (4, 7, null)")
    topic = unique_topic("snap")
    async with open_client(cdc.server, vsn) as c:
        reply = await c.join(topic, {"postgres_changes": [binding(table, filter="list_id=eq.7", snapshot=True)]})
        assert reply.payload["status"] == "ok", reply.value
        echoed = reply.payload["response"]["postgres_changes"]
        got = await frames_until(c, topic, is_complete)
        cdc.execute(f"insert into {table} values (5, 7, 'd'), (6, 8, 'e')")
        cdc.execute(f"update {table} set body = 'z' where id = 1")
        live = await frames_until(c, topic, is_row("UPDATE", 1))
    assert got[0].payload["message"] == SUBSCRIBED
    assert records(got[1:-1]) == [{"id": 1, "list_id": 7, "body": "a"}, {"id": 3, "list_id": 7, "body": "c"},
                                  {"id": 4, "list_id": 7, "body": None}]
    row = got[1].payload
    assert row["ids"] == [echoed[0]["id"]]
    assert row["data"]["columns"] == [{"name": "id", "type": "int4"}, {"name": "list_id", "type": "int4"},
                                      {"name": "body", "type": "text"}]
    assert row["data"]["errors"] is None and row["data"]["commit_timestamp"]
    complete = got[-1].payload
    assert complete["status"] == "ok" and complete["extension"] == "postgres_changes"
    assert complete["message"] == "Snapshot complete: 3 rows"
    assert complete["snapshot"]["rows"] == 3
    assert [(f.payload["data"]["type"], f.payload["data"]["record"]["id"]) for f in live] == [
        ("INSERT", 5), ("UPDATE", 1)]


async def test_snapshot_applies_rls_column_privileges_and_select(cdc: Any) -> None:
    table = cdc.table("id int primary key, owner uuid, secret text, body text", rls=True)
    cdc.execute(f"revoke select on {table} from authenticated")
    cdc.execute(f"grant select (id, owner, body) on {table} to authenticated")
    cdc.execute(f"create policy own on {table} for select to authenticated using (owner = auth.uid())")
    cdc.execute(f"insert into {table} values (1, '{U1}', 's1', 'a'), (2, '{U2}', 's2', 'b'), (3, '{U1}', 's3', 'c')")
    topic = unique_topic("snap-rls")
    async with open_client(cdc.server, V2) as c:
        await c.join_ok(topic, {"postgres_changes": [binding(table, snapshot=True)]},
                        access_token=make_token("authenticated", sub=U1))
        full = await frames_until(c, topic, is_complete)
        narrow_topic = unique_topic("snap-select")
        await c.join_ok(narrow_topic, {"postgres_changes": [binding(table, snapshot=True, select=["body"])]},
                        access_token=make_token("authenticated", sub=U2))
        narrow = await frames_until(c, narrow_topic, is_complete)
    assert records(full[1:-1]) == [{"id": 1, "owner": U1, "body": "a"}, {"id": 3, "owner": U1, "body": "c"}]
    assert records(narrow[1:-1]) == [{"id": 2, "body": "b"}]


async def test_snapshot_with_wait_comes_after_the_reply_and_a_refresh_reads_none(cdc: Any) -> None:
    table = cdc.table("id int primary key")
    cdc.execute(f"insert into {table} values (1), (2)")
    topic = unique_topic("snap-wait")
    async with open_client(cdc.server, V2) as c:
        reply = await c.join(topic, {"postgres_changes": [binding(table, snapshot=True)],
                                     "postgres_changes_options": {"wait": True}},
                             access_token=make_token("authenticated", sub=U1))
        assert reply.payload["status"] == "ok", reply.value
        got = await frames_until(c, topic, is_complete)
        await c.push(topic, "access_token", {"access_token": make_token("authenticated", sub=U1, exp_in=7200)})
        resubscribed = await frames_until(c, topic, lambda f: f.event == "system")
        cdc.execute(f"insert into {table} values (3)")
        after = await frames_until(c, topic, is_row("INSERT", 3))
    assert [f.payload["message"] for f in got if f.event == "system"] == [SUBSCRIBED, "Snapshot complete: 2 rows"]
    assert [r["id"] for r in records(got)] == [1, 2]
    assert [f.payload["message"] for f in resubscribed] == [SUBSCRIBED]
    assert [f.event for f in after] == ["postgres_changes"], "the refresh read no snapshot"


async def test_too_large_a_snapshot_is_refused_and_changes_still_flow(cdc: Any, tmp_path: Any) -> None:
    with feed_server(cdc, tmp_path, "big", REALTIME_SNAPSHOT_MAX_ROWS="3") as server:
        table = cdc.table("id int primary key")
        cdc.execute(f"insert into {table} select generate_series(1, 5)")
        topic = unique_topic("snap-big")
        async with open_client(server, V2) as c:
            await c.join_ok(topic, {"postgres_changes": [binding(table, snapshot=True)]})
            got = await frames_until(c, topic, lambda f: f.event == "system" and f.payload["status"] == "error")
            cdc.execute(f"insert into {table} values (6)")
            live = await frames_until(c, topic, is_row("INSERT", 6))
        assert [f.event for f in got] == ["system", "system"], [f.value for f in got]
        assert got[1].payload["message"].startswith("SnapshotTooLarge: more than 3 rows match")
        assert [f.event for f in live] == ["postgres_changes"]


async def test_joins_during_concurrent_writes_miss_nothing_and_double_nothing(cdc: Any) -> None:
    """Writers insert and update rows (some transactions long enough to be in progress when a
    snapshot is taken) while channels join with a snapshot; each channel's state — its snapshot
    rows, then its changes, applied in order — ends equal to the table, with no INSERT twice."""
    table = cdc.table("id int primary key, owner uuid, n int", rls=True)
    cdc.execute(f"create policy own on {table} for select to authenticated using (owner = auth.uid())")
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with psycopg.connect(cdc.dsn, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                owner = U1 if i % 3 else U2
                with conn.transaction():
                    conn.execute(f"insert into {table} values (%s, %s, 0)", (i, owner))
                    if i > 1:
                        conn.execute(f"update {table} set n = n + 1 where id = %s", (i - 1,))
                written.append(i)

    thread = threading.Thread(target=writer)
    thread.start()
    topics: list[str] = []
    snapshots: dict[str, list[Frame]] = {}
    try:
        async with open_client(cdc.server, V2) as c:
            for k in range(12):
                topic = unique_topic(f"race{k}")
                topics.append(topic)
                await c.join_ok(topic, {"postgres_changes": [binding(table, snapshot=True)]},
                                access_token=make_token("authenticated", sub=U1))
                snapshots[topic] = await frames_until(c, topic, is_complete)
            stop.set()
            await asyncio.to_thread(thread.join)
            marker = max(written) + 1
            cdc.execute(f"insert into {table} values (%s, %s, 0)", (marker, U1))
            final = {r[0]: r[1] for r in cdc.conn.execute(
                f"select id, n from {table} where owner = %s and id < %s", (U1, marker)).fetchall()}
            assert len(final) > 20, "the writer wrote while the channels joined"
            for topic in topics:
                state: dict[int, int] = {}
                inserted: set[int] = set()
                seen = snapshots[topic] + await frames_until(c, topic, is_row("INSERT", marker))
                for f in seen[:-1]:
                    if f.event != "postgres_changes":
                        continue
                    data = f.payload["data"]
                    rec = data["record"]
                    if data["type"] == "INSERT":
                        assert rec["id"] not in inserted, f"{topic}: row {rec['id']} inserted twice"
                        inserted.add(rec["id"])
                    state[rec["id"]] = rec["n"]
                if state != final:
                    bad = sorted(k for k in final if state.get(k) != final[k])
                    near = set(range(bad[0] - 3, bad[0] + 3))
                    trace = [(f.event, f.payload.get("message") or (f.payload["data"]["type"], f.payload["data"]["record"]))
                             for f in seen if f.event == "system" or f.payload["data"]["record"]["id"] in near]
                    raise AssertionError(f"{topic}: {bad} {trace}")
    finally:
        stop.set()
        thread.join()


async def test_supabase_js_binding_with_snapshot_receives_rows_then_changes(cdc: Any, node: NodePeer) -> None:
    table = cdc.table("id int primary key, list_id int")
    cdc.execute(f"insert into {table} values (1, 7), (2, 8), (3, 7)")
    topic = unique_topic("snap-js")
    await node.add_client("a", cdc.server)
    await node.subscribe("a", "todos", topic, postgres=[binding(table, filter="list_id=eq.7", snapshot=True)])
    done = await node.log.wait_for(
        lambda e: e["type"] == "system" and e["ch"] == "todos" and e["payload"]["message"].startswith("Snapshot"),
        timeout=WAIT, what="the snapshot's end")
    assert done["payload"]["snapshot"]["rows"] == 2
    cdc.execute(f"insert into {table} values (4, 7)")
    await node.log.wait_for(lambda e: e["type"] == "postgres_changes" and e["payload"]["new"].get("id") == 4,
                            timeout=WAIT, what="the live insert")
    rows = [(e["payload"]["eventType"], e["payload"]["new"]["id"])
            for e in node.log.matching(lambda e: e["type"] == "postgres_changes" and e["ch"] == "todos")]
    assert rows == [("INSERT", 1), ("INSERT", 3), ("INSERT", 4)]


async def test_a_resume_after_a_snapshot_replays_changes_and_reads_no_snapshot_again(cdc: Any) -> None:
    table = cdc.table("id int primary key")
    cdc.execute(f"insert into {table} values (1), (2)")
    topic = unique_topic("snap-resume")
    config = {"postgres_changes": [binding(table, snapshot=True)], "postgres_changes_options": {"resume": True}}
    async with open_client(cdc.server, V2) as c:
        await c.join_ok(topic, config)
        got = await frames_until(c, topic, is_complete)
    offset = got[-1].payload["snapshot"]["offset"]
    assert [r["id"] for r in records(got[1:-1])] == [1, 2] and isinstance(offset, str)
    async with open_client(cdc.server, V2) as watcher:
        watch = unique_topic("snap-resume-watch")
        await watcher.join_ok(watch, {"postgres_changes": [binding(table)]})
        await frames_until(watcher, watch, lambda f: f.event == "system")  # subscribed
        cdc.execute(f"insert into {table} values (3)")
        await frames_until(watcher, watch, is_row("INSERT", 3))  # the barrier: the server routed row 3
    async with open_client(cdc.server, V2) as c:
        await c.join_ok(topic, {**config, "postgres_changes_options": {"resume": {"offset": offset}}})
        again = await frames_until(c, topic, is_row("INSERT", 3))
    assert [f.event for f in again] == ["system", "postgres_changes"], [f.value for f in again]
    assert again[1].ref.endswith(";replayed")
