"""Helpers for the resume tests with the official clients (tests/resume, tests/cdc,
tests/cluster): writers of broadcasts and rows, the 5-second outage, and supabase-js and Python
``realtime`` subscribers that use the resume helpers.  A plain module put on ``sys.path``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from rawclient import V2, open_client
from support import wait_until
from tcpproxy import TcpProxy

TOTAL = 1000
CUT_AT = 300
PEER = os.path.join(os.path.dirname(__file__), "resume_peer.mjs")


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
    """Broadcasts ``{"i": first…}`` of event ``n``, each acked (taken for fan-out) before the next;
    ``pace_s`` spreads them out so that some arrive while the subscriber rejoins."""
    async with open_client(server, V2) as pub:
        await pub.join_ok(topic, {"broadcast": {"ack": True}})
        for i in range(first, first + count):
            ref = await pub.broadcast(topic, "n", {"i": i})
            await pub.expect(lambda f, ref=ref: f.ref == ref and f.event == "phx_reply")
            if pace_s:
                await asyncio.sleep(pace_s)  # pacing the sender, not waiting for a condition


async def send(server: Any, topic: str, first: int, count: int, pace_s: float = 0.0, *,
               dsn: str | None = None, table: str | None = None) -> None:
    """``count`` broadcasts, and as many rows side by side when ``table`` is given."""
    jobs = [publish(server, topic, first, count, pace_s)]
    if dsn is not None and table is not None:
        jobs.append(insert_paced(dsn, table, first, count, pace_s) if pace_s
                    else asyncio.to_thread(insert, dsn, table, first, count))
    await asyncio.gather(*jobs)


async def outage(server: Any, proxy: TcpProxy, topic: str, broadcasts: Callable[[], list[int]],
                 subscribed: Callable[[], int], on_cut: Callable[[], None] = lambda: None, *,
                 dsn: str | None = None, table: str | None = None,
                 rows: Callable[[], list[int]] = lambda: []) -> None:
    """300 broadcasts (and rows, with ``table``); the subscriber cut off for 5 s while 400 more
    flow; 300 more spread over the reconnect; then all 1,000 of each, once, in order."""
    def at_least(n: int) -> bool:
        return len(broadcasts()) >= n and (table is None or len(rows()) >= n)

    await send(server, topic, 0, CUT_AT, dsn=dsn, table=table)
    await wait_until(lambda: at_least(CUT_AT), 30, "the first 300 of each")
    proxy.cut(5.0)
    on_cut()
    await send(server, topic, CUT_AT, 400, dsn=dsn, table=table)
    tail = asyncio.create_task(send(server, topic, CUT_AT + 400, TOTAL - CUT_AT - 400, pace_s=0.02,
                                    dsn=dsn, table=table))
    await wait_until(lambda: subscribed() >= 2, 30, "the automatic rejoin")
    await tail
    await wait_until(lambda: at_least(TOTAL), 60, "all 1,000 of each")
    assert broadcasts() == list(range(TOTAL))
    if table is not None:
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


@asynccontextmanager
async def js_subscriber(proxy: TcpProxy, key: str, topic: str, table: str | None = None
                        ) -> AsyncIterator[dict[str, Any]]:
    """supabase-js with ``resumable`` (tests/resume/resume_peer.mjs) through ``proxy``: its
    broadcasts (``msgs``), the table's INSERTs (``rows``), statuses and system messages."""
    proc = await asyncio.create_subprocess_exec(
        "node", PEER, f"http://127.0.0.1:{proxy.port}", key, topic.removeprefix("realtime:"),
        *([table] if table is not None else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    state: dict[str, Any] = {"rows": [], "msgs": [], "status": [], "system": []}
    kinds = {"row": "rows", "msg": "msgs"}

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            ev = json.loads(line)
            if ev["type"] in kinds:
                state[kinds[ev["type"]]].append(ev)
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


@dataclass
class PySubscriber:
    """What a Python ``realtime`` subscriber with ``resumable`` received."""

    channel: Any = None
    broadcasts: list[dict[str, Any]] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)
    system: list[Any] = field(default_factory=list)
    subscribed: int = 0


@asynccontextmanager
async def python_subscriber(proxy: TcpProxy, key: str, sub_topic: str, table: str | None = None
                            ) -> AsyncIterator[PySubscriber]:
    """The Python client through ``proxy``, subscribed to ``sub_topic`` (event ``n`` broadcasts,
    and the table's INSERTs with ``table``), reconnecting by itself."""
    from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

    from realtime_channels.client import resumable

    client = AsyncRealtimeClient(f"{proxy.ws_url}/socket", key, auto_reconnect=True, initial_backoff=0.5)
    sub = PySubscriber()
    try:
        sub.channel = resumable(client.channel(sub_topic))
        sub.channel.on_broadcast("n", lambda m: sub.broadcasts.append(m))
        if table is not None:
            sub.channel.on_postgres_changes("INSERT", lambda p: sub.rows.append(record_id(p)), table=table,
                                            schema="public")
        sub.channel.on_system(lambda p: sub.system.append(p))

        def on_state(state: RealtimeSubscribeStates, _err: Exception | None) -> None:
            if state == RealtimeSubscribeStates.SUBSCRIBED:
                sub.subscribed += 1

        await sub.channel.subscribe(on_state)
        yield sub
    finally:
        await client.close()


async def python_mixed_outage(proxy: TcpProxy, server: Any, dsn: str, key: str, sub_topic: str, table: str,
                              on_cut: Callable[[], None] = lambda: None) -> None:
    """The outage, with broadcasts and rows, for a Python subscriber."""
    async with python_subscriber(proxy, key, sub_topic, table) as sub:
        await wait_until(lambda: subscribed_pg(sub.system), 30, "the binding to be live")
        await outage(server, proxy, f"realtime:{sub_topic}", lambda: [m["payload"]["i"] for m in sub.broadcasts],
                     lambda: sub.subscribed, on_cut, dsn=dsn, table=table, rows=lambda: sub.rows)
        assert sub.channel.resume_position.postgres is not None
