"""The official clients with the resume helpers (clients/js/resumable.mjs,
``realtime_channels.client.resumable``) on postgres_changes (protocol.md §4.10), each behind a
TCP proxy:

* a subscriber cut off for 5 s while 1,000 broadcasts and 1,000 row changes flow receives every
  one of each exactly once and in order, supabase-js and Python alike;
* while 1,000 rows are inserted the server is killed (SIGKILL) and a new one started on the same
  replication slot; both clients, reconnecting through the proxy that now points at the new
  server, receive every row exactly once and in order.

The same over two nodes on Redis is in tests/cluster/test_cdc_cluster.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from support import start_server, wait_until

HERE = os.path.dirname(__file__)
RESUME_DIR = os.path.join(HERE, "..", "resume")
if RESUME_DIR not in sys.path:
    sys.path.insert(0, RESUME_DIR)

from pgresume import (  # noqa: E402
    TOTAL,
    insert,
    insert_paced,
    mixed_outage,
    python_mixed_outage,
    record_id,
    subscribed_pg,
)
from tcpproxy import TcpProxy  # noqa: E402

KILL_AT = 300
DOWN = 400  # rows committed while no server runs
PEER = os.path.join(RESUME_DIR, "resume_peer.mjs")


@asynccontextmanager
async def js_subscriber(proxy: TcpProxy, key: str, topic: str, table: str) -> AsyncIterator[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        "node", PEER, f"http://127.0.0.1:{proxy.port}", key, topic, table,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    state: dict[str, Any] = {"rows": [], "msgs": [], "status": [], "system": []}

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            ev = json.loads(line)
            if ev["type"] == "row":
                state["rows"].append(ev)
            elif ev["type"] == "msg":
                state["msgs"].append(ev)
            elif ev["type"] == "status":
                state["status"].append(ev["status"])
            elif ev["type"] == "system":
                state["system"].append(ev["payload"])

    reader = asyncio.create_task(read())
    try:
        yield state
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await proc.wait()
        await reader


async def test_both_clients_get_every_row_once_across_a_server_killed_and_restarted(cdc: Any, tmp_path: Any) -> None:
    from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

    from realtime_channels.client import resumable

    slot = f"{cdc.slot[:46]}_clients"
    env = dict(REALTIME_DATABASE_URL=cdc.dsn, REALTIME_PUBLICATION=cdc.publication, REALTIME_SLOT_NAME=slot)
    table = cdc.table("id int primary key")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    first = start_server(str(tmp_path / "a"), **env)
    second = None
    proxy = TcpProxy(first.port)
    await proxy.start()
    client = AsyncRealtimeClient(f"{proxy.ws_url}/socket", first.anon_key, auto_reconnect=True, initial_backoff=0.5)
    py_rows: list[Any] = []
    py_subscribed: list[int] = []
    py_system: list[Any] = []
    try:
        async with js_subscriber(proxy, first.anon_key, "rows-js", table) as js:
            channel = resumable(client.channel("rows-py"))
            channel.on_postgres_changes("INSERT", lambda p: py_rows.append(record_id(p)), table=table, schema="public")
            channel.on_system(lambda p: py_system.append(p))

            def on_state(state: RealtimeSubscribeStates, _err: Exception | None) -> None:
                if state == RealtimeSubscribeStates.SUBSCRIBED:
                    py_subscribed.append(1)

            await channel.subscribe(on_state)
            js_rows = lambda: [r["i"] for r in js["rows"]]  # noqa: E731
            # both bindings live (their "Subscribed to PostgreSQL"), then the first row
            await wait_until(lambda: subscribed_pg(js["system"]) and subscribed_pg(py_system), 30,
                             "both bindings to be live")
            await asyncio.to_thread(insert, cdc.dsn, table, 0, 1)
            await wait_until(lambda: js_rows() == [0] and py_rows == [0], 30, "row 0 at both clients")
            await asyncio.to_thread(insert, cdc.dsn, table, 1, KILL_AT - 1)
            await wait_until(lambda: len(js_rows()) >= KILL_AT and len(py_rows) >= KILL_AT, 30, "the first 300 rows")

            first.proc.kill()  # SIGKILL: no goodbye, no final acknowledgement
            first.proc.wait()
            await asyncio.to_thread(insert, cdc.dsn, table, KILL_AT, DOWN)
            second = start_server(str(tmp_path / "b"), **env)
            proxy.retarget(second.port)
            await insert_paced(cdc.dsn, table, KILL_AT + DOWN, TOTAL - KILL_AT - DOWN, 0.02)
            await wait_until(lambda: js["status"].count("SUBSCRIBED") >= 2 and len(py_subscribed) >= 2, 30,
                             "both clients to rejoin")
            await wait_until(lambda: len(js_rows()) >= TOTAL and len(py_rows) >= TOTAL, 60, "all 1,000 rows")

            assert js_rows() == list(range(TOTAL))
            assert py_rows == list(range(TOTAL))
            replayed = [r for r in js["rows"] if r["ref"].endswith(";replayed")]
            assert replayed, "the rows committed while the server was down came from the replay"
            offsets = [r["ref"].split(";")[0] for r in js["rows"]]
            assert offsets == sorted(offsets) and len(set(offsets)) == TOTAL
            assert js["system"] == [] or all("gap" not in s for s in js["system"])
            assert channel.resume_position.postgres == offsets[-1]
    finally:
        await client.close()
        await proxy.close()
        first.stop()
        if second is not None:
            second.stop()
        with psycopg.connect(cdc.dsn, autocommit=True) as conn:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))


@asynccontextmanager
async def feed_server(cdc: Any, tmp_path: Any, name: str) -> AsyncIterator[Any]:
    slot = f"{cdc.slot[:44]}_{name}"
    (tmp_path / name).mkdir()
    server = start_server(str(tmp_path / name), REALTIME_DATABASE_URL=cdc.dsn, REALTIME_PUBLICATION=cdc.publication,
                          REALTIME_SLOT_NAME=slot)
    try:
        yield server
    finally:
        server.stop()
        with psycopg.connect(cdc.dsn, autocommit=True) as conn:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))


async def test_js_subscriber_cut_off_gets_every_broadcast_and_row_once(cdc: Any, tmp_path: Any) -> None:
    table = cdc.table("id int primary key")
    async with feed_server(cdc, tmp_path, "cutjs") as server:
        proxy = TcpProxy(server.port)
        await proxy.start()
        try:
            async with js_subscriber(proxy, server.anon_key, "mixed-js", table) as js:
                await wait_until(lambda: subscribed_pg(js["system"]), 30, "the binding to be live")
                await mixed_outage(server, cdc.dsn, proxy, "realtime:mixed-js", table,
                                   lambda: [m["i"] for m in js["msgs"]], lambda: [r["i"] for r in js["rows"]],
                                   lambda: js["status"].count("SUBSCRIBED"))
                assert any(r["ref"].endswith(";replayed") for r in js["rows"])
                assert any(m["meta"].get("replayed") for m in js["msgs"])
                assert all("gap" not in s for s in js["system"])
        finally:
            await proxy.close()


async def test_python_subscriber_cut_off_gets_every_broadcast_and_row_once(cdc: Any, tmp_path: Any) -> None:
    table = cdc.table("id int primary key")
    async with feed_server(cdc, tmp_path, "cutpy") as server:
        proxy = TcpProxy(server.port)
        await proxy.start()
        try:
            await python_mixed_outage(proxy, server, cdc.dsn, server.anon_key, "mixed-py", table)
        finally:
            await proxy.close()
