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
import os
import sys
from typing import Any

from feedservers import feed_server, own_slot
from support import start_server, wait_until

HERE = os.path.dirname(__file__)
RESUME_DIR = os.path.join(HERE, "..", "resume")
if RESUME_DIR not in sys.path:
    sys.path.insert(0, RESUME_DIR)

from resumekit import (  # noqa: E402
    TOTAL,
    insert,
    insert_paced,
    js_subscriber,
    outage,
    python_mixed_outage,
    python_subscriber,
    subscribed_pg,
)
from tcpproxy import TcpProxy  # noqa: E402

KILL_AT = 300
DOWN = 400  # rows committed while no server runs


async def test_both_clients_get_every_row_once_across_a_server_killed_and_restarted(cdc: Any, tmp_path: Any) -> None:
    table = cdc.table("id int primary key")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    with own_slot(cdc, "clients") as env:
        first = start_server(str(tmp_path / "a"), **env)
        second = None
        proxy = TcpProxy(first.port)
        await proxy.start()
        try:
            async with js_subscriber(proxy, first.anon_key, "rows-js", table) as js, \
                    python_subscriber(proxy, first.anon_key, "rows-py", table) as py:
                js_rows = lambda: [r["i"] for r in js["rows"]]  # noqa: E731
                # both bindings live (their "Subscribed to PostgreSQL"), then the first row
                await wait_until(lambda: subscribed_pg(js["system"]) and subscribed_pg(py.system), 30,
                                 "both bindings to be live")
                await asyncio.to_thread(insert, cdc.dsn, table, 0, 1)
                await wait_until(lambda: js_rows() == [0] and py.rows == [0], 30, "row 0 at both clients")
                await asyncio.to_thread(insert, cdc.dsn, table, 1, KILL_AT - 1)
                await wait_until(lambda: len(js_rows()) >= KILL_AT and len(py.rows) >= KILL_AT, 30,
                                 "the first 300 rows")

                first.proc.kill()  # SIGKILL: no goodbye, no final acknowledgement
                first.proc.wait()
                await asyncio.to_thread(insert, cdc.dsn, table, KILL_AT, DOWN)
                second = start_server(str(tmp_path / "b"), **env)
                proxy.retarget(second.port)
                await insert_paced(cdc.dsn, table, KILL_AT + DOWN, TOTAL - KILL_AT - DOWN, 0.02)
                await wait_until(lambda: js["status"].count("SUBSCRIBED") >= 2 and py.subscribed >= 2, 30,
                                 "both clients to rejoin")
                await wait_until(lambda: len(js_rows()) >= TOTAL and len(py.rows) >= TOTAL, 60, "all 1,000 rows")

                assert js_rows() == list(range(TOTAL))
                assert py.rows == list(range(TOTAL))
                replayed = [r for r in js["rows"] if r["ref"].endswith(";replayed")]
                assert replayed, "the rows committed while the server was down came from the replay"
                offsets = [r["ref"].split(";")[0] for r in js["rows"]]
                assert offsets == sorted(offsets) and len(set(offsets)) == TOTAL
                assert js["system"] == [] or all("gap" not in s for s in js["system"])
                assert py.channel.resume_position.postgres == offsets[-1]
        finally:
            await proxy.close()
            first.stop()
            if second is not None:
                second.stop()


async def test_js_subscriber_cut_off_gets_every_broadcast_and_row_once(cdc: Any, tmp_path: Any) -> None:
    table = cdc.table("id int primary key")
    with feed_server(cdc, tmp_path, "cutjs") as server:
        proxy = TcpProxy(server.port)
        await proxy.start()
        try:
            async with js_subscriber(proxy, server.anon_key, "mixed-js", table) as js:
                await wait_until(lambda: subscribed_pg(js["system"]), 30, "the binding to be live")
                await outage(server, proxy, "realtime:mixed-js", lambda: [m["i"] for m in js["msgs"]],
                             lambda: js["status"].count("SUBSCRIBED"), dsn=cdc.dsn, table=table,
                             rows=lambda: [r["i"] for r in js["rows"]])
                assert any(r["ref"].endswith(";replayed") for r in js["rows"])
                assert any(m["meta"].get("replayed") for m in js["msgs"])
                assert all("gap" not in s for s in js["system"])
        finally:
            await proxy.close()


async def test_python_subscriber_cut_off_gets_every_broadcast_and_row_once(cdc: Any, tmp_path: Any) -> None:
    table = cdc.table("id int primary key")
    with feed_server(cdc, tmp_path, "cutpy") as server:
        proxy = TcpProxy(server.port)
        await proxy.start()
        try:
            await python_mixed_outage(proxy, server, cdc.dsn, server.anon_key, "mixed-py", table)
        finally:
            await proxy.close()
