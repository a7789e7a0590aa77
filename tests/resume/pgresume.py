"""Helpers for the postgres_changes resume tests with the official clients (tests/cdc and
tests/cluster): writers of rows and broadcasts, the 5-second outage scenario, a Python
``realtime`` subscriber with the resume helper.  A plain module put on ``sys.path``."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from rawclient import V2, open_client
from support import wait_until
from tcpproxy import TcpProxy

TOTAL = 1000
CUT_AT = 300


def insert(dsn: str, table: str, first: int, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(first, first + count):
            conn.execute(f"insert into {table} values (%s)", (i,))


async def insert_paced(dsn: str, table: str, first: int, count: int, pace_s: float) -> None:
    """Rows one by one, spread out so that some are committed while the clients rejoin."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        for i in range(first, first + count):
            await conn.execute(f"insert into {table} values (%s)", (i,))
            await asyncio.sleep(pace_s)  # pacing the writer, not waiting for a condition
    finally:
        await conn.close()


async def publish(server: Any, topic: str, first: int, count: int, pace_s: float = 0.0) -> None:
    """Broadcasts ``{"i": first…}`` of event ``n``, each acked before the next."""
    async with open_client(server, V2) as pub:
        await pub.join_ok(topic, {"broadcast": {"ack": True}})
        for i in range(first, first + count):
            ref = await pub.broadcast(topic, "n", {"i": i})
            await pub.expect(lambda f, ref=ref: f.ref == ref and f.event == "phx_reply")
            if pace_s:
                await asyncio.sleep(pace_s)  # pacing the sender, not waiting for a condition


async def both(server: Any, dsn: str, topic: str, table: str, first: int, count: int, pace_s: float = 0.0) -> None:
    """``count`` broadcasts and ``count`` rows, sent side by side."""
    await asyncio.gather(publish(server, topic, first, count, pace_s),
                         insert_paced(dsn, table, first, count, pace_s) if pace_s
                         else asyncio.to_thread(insert, dsn, table, first, count))


async def mixed_outage(server: Any, dsn: str, proxy: TcpProxy, topic: str, table: str,
                       broadcasts: Any, rows: Any, subscribed: Any, on_cut: Any = lambda: None) -> None:
    """300 of each; the subscriber cut off for 5 s while 400 more of each flow; 300 more of each
    spread over the reconnect; then all 1,000 of each, once, in order."""
    await both(server, dsn, topic, table, 0, CUT_AT)
    await wait_until(lambda: len(broadcasts()) >= CUT_AT and len(rows()) >= CUT_AT, 30, "the first 300 of each")
    proxy.cut(5.0)
    on_cut()
    await both(server, dsn, topic, table, CUT_AT, 400)
    tail = asyncio.create_task(both(server, dsn, topic, table, CUT_AT + 400, TOTAL - CUT_AT - 400, pace_s=0.02))
    await wait_until(lambda: subscribed() >= 2, 30, "the automatic rejoin")
    await tail
    await wait_until(lambda: len(broadcasts()) >= TOTAL and len(rows()) >= TOTAL, 60, "all 1,000 of each")
    assert broadcasts() == list(range(TOTAL))
    assert rows() == list(range(TOTAL))
    assert proxy.refused >= 1  # the client did try while it was cut off


def subscribed_pg(system: list[Any]) -> bool:
    """The JS peer reports plain objects; the Python client passes pydantic models."""
    return any((p.get("message") if isinstance(p, dict) else getattr(p, "message", None))
               == "Subscribed to PostgreSQL" for p in system)


def record_id(payload: Any) -> Any:
    data = payload["data"] if isinstance(payload, dict) else payload.data
    record = data["record"] if isinstance(data, dict) else data.record
    return record["id"]


async def python_mixed_outage(proxy: TcpProxy, server: Any, dsn: str, key: str, sub_topic: str, table: str,
                              on_cut: Any = lambda: None) -> None:
    from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

    from realtime_channels.client import resumable

    client = AsyncRealtimeClient(f"{proxy.ws_url}/socket", key, auto_reconnect=True, initial_backoff=0.5)
    got_b: list[int] = []
    got_r: list[int] = []
    system: list[Any] = []
    subscribed: list[int] = []
    try:
        channel = resumable(client.channel(sub_topic))
        channel.on_broadcast("n", lambda m: got_b.append(m["payload"]["i"]))
        channel.on_postgres_changes("INSERT", lambda p: got_r.append(record_id(p)), table=table, schema="public")
        channel.on_system(lambda p: system.append(p))

        def on_state(state: RealtimeSubscribeStates, _err: Exception | None) -> None:
            if state == RealtimeSubscribeStates.SUBSCRIBED:
                subscribed.append(1)

        await channel.subscribe(on_state)
        await wait_until(lambda: subscribed_pg(system), 30, "the binding to be live")
        await mixed_outage(server, dsn, proxy, f"realtime:{sub_topic}", table, lambda: got_b, lambda: got_r,
                           lambda: len(subscribed), on_cut)
        assert channel.resume_position.postgres is not None
    finally:
        await client.close()
