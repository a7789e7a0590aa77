"""The spans of a postgres_changes transaction (docs/observability.md): ``realtime.cdc.transaction``
with its RLS batch (``realtime.cdc.rls``) and fan-out (``realtime.cdc.fanout``), recorded by the
SDK's in-memory exporter.

The application runs in the test's process (so the exporter can be read), streaming from a
real PostgreSQL on the session's private cluster; the peer is aiohttp's WebSocket client.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pgcluster import create_database, drop_database, install_auth_helpers
from support import make_token, wait_until

from realtime_channels.auth import JwtVerifier
from realtime_channels.cdc.changes import PostgresChanges
from realtime_channels.cdc.types import FeedState
from realtime_channels.config import Settings
from realtime_channels.node import Node
from realtime_channels.pubsub.memory import MemoryPubSub
from realtime_channels.transport.app import build_app

SECRET = "cdc-tracing-test-secret-at-least-32-chars"
PUBLICATION, SLOT = "rc_pub_tracing", "rc_slot_tracing"


@pytest.fixture
def db(pg_cluster: Any) -> Iterator[str]:
    name = f"rc_cdc_tracing_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_cluster, name)
    install_auth_helpers(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("grant usage on schema public to anon, authenticated, service_role")
    yield dsn
    drop_database(pg_cluster, name)


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> dict[str, ReadableSpan]:
    assert parent.context is not None
    return {s.name: s for s in exporter.get_finished_spans()
            if s.parent is not None and s.parent.span_id == parent.context.span_id}


async def receive(ws: aiohttp.ClientWebSocketResponse, event: str) -> dict[str, Any]:
    while True:
        msg = await ws.receive(timeout=20)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        frame: dict[str, Any] = json.loads(msg.data)
        if frame["event"] == event:
            return frame


async def test_a_transaction_has_its_rls_batch_and_fanout_as_children(db: str, spans: InMemorySpanExporter) -> None:
    settings = Settings(jwt_secret=SECRET, join_error_backoff_ms=0, database_url=db)
    changes = PostgresChanges(db, publication=PUBLICATION, slot=SLOT)
    node = Node(settings, MemoryPubSub(), "cdc-tracing", changes=changes)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, node, JwtVerifier(SECRET, None))))
    await client.start_server()
    conn = psycopg.connect(db, autocommit=True)
    try:
        await wait_until(lambda: changes.state == FeedState.STREAMING or None, 30, "the feed to stream")
        table = f"t_{uuid.uuid4().hex[:8]}"
        conn.execute(f"create table public.{table} (id int primary key, shown boolean not null)")
        conn.execute(f"alter table public.{table} enable row level security")
        conn.execute(f"create policy shown on public.{table} for select to anon using (shown)")
        conn.execute(f"grant select on public.{table} to anon")
        conn.execute(f"alter publication {PUBLICATION} add table public.{table}")
        binding = {"event": "INSERT", "schema": "public", "table": table}
        token = make_token("anon", secret=SECRET)
        async with client.ws_connect("/realtime/v1/websocket", params={"apikey": token, "vsn": "1.0.0"}) as ws:
            await ws.send_str(json.dumps({"topic": "realtime:rows", "event": "phx_join", "ref": "1", "join_ref": "1",
                                          "payload": {"config": {"postgres_changes": [binding]}}}))
            assert (await receive(ws, "phx_reply"))["payload"]["status"] == "ok"
            subscribed = await receive(ws, "system")
            assert subscribed["payload"]["status"] == "ok", subscribed
            with conn.transaction():
                conn.execute(f"insert into public.{table} values (1, true), (2, false), (3, true)")
            got = [await receive(ws, "postgres_changes") for _ in range(2)]
            assert sorted(f["payload"]["data"]["record"]["id"] for f in got) == [1, 3]

            def routed() -> list[ReadableSpan] | None:
                return [s for s in spans.get_finished_spans()
                        if s.name == "realtime.cdc.transaction" and "realtime.cdc.rls" in children(spans, s)] or None

            [txn] = await wait_until(routed, 10, "the transaction's span")
    finally:
        conn.close()
        await client.close()
    assert txn.attributes is not None
    assert txn.attributes["changes"] == 3 and txn.attributes["matched"] == 3
    assert txn.attributes["replayed"] is False and isinstance(txn.attributes["xid"], int)
    kids = children(spans, txn)
    assert set(kids) == {"realtime.cdc.rls", "realtime.cdc.fanout"}
    rls, fanout = kids["realtime.cdc.rls"], kids["realtime.cdc.fanout"]
    assert rls.attributes is not None and dict(rls.attributes) == {
        "table": f"public.{table}", "cohorts": 1, "rows": 3, "mode": "batched"}
    assert fanout.attributes is not None and dict(fanout.attributes) == {"deliveries": 2}
    assert rls.end_time is not None and fanout.start_time is not None and rls.end_time <= fanout.start_time
