"""OpenTelemetry spans (docs/observability.md), recorded by the SDK's in-memory exporter.

The application runs in the test's process (aiohttp's test server, the in-memory backbone, a
real PostgreSQL for the private channel's policy check) so the spans can be read back from the
exporter; the peer is aiohttp's WebSocket client.  Two more checks run the real command: with
no ``OTEL_*`` exporter nothing imports OpenTelemetry, and ``OTEL_TRACES_EXPORTER=console``
configured from the environment writes the server's spans out as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pgcluster import create_database, drop_database, install_auth_helpers
from support import ServerProc, make_token, start_server, wait_until

from realtime_channels import tracing
from realtime_channels.auth import JwtVerifier
from realtime_channels.config import Settings
from realtime_channels.messages.authz import ChannelAuthorizer
from realtime_channels.messages.migrations import migrate
from realtime_channels.node import Node
from realtime_channels.pubsub.memory import MemoryPubSub
from realtime_channels.transport.app import build_app

SECRET = "tracing-test-secret-of-at-least-32-chars"

POLICY_SQL = """
create policy "anon reads open rooms" on realtime.messages for select to anon
    using (realtime.topic() like 'open:%');
"""


async def app_client(authorizer: ChannelAuthorizer | None = None) -> TestClient[Any, Any]:
    settings = Settings(jwt_secret=SECRET, connect_error_backoff_ms=0, join_error_backoff_ms=0)
    node = Node(settings, MemoryPubSub(), "tracing", authorizer=authorizer)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, node, JwtVerifier(SECRET, None))))
    await client.start_server()
    return client


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    c = await app_client()
    yield c
    await c.close()


def token(role: str = "anon", **claims: Any) -> str:
    return make_token(role, secret=SECRET, **claims)


async def join(ws: aiohttp.ClientWebSocketResponse, topic: str, payload: dict[str, Any], ref: str) -> dict[str, Any]:
    await ws.send_str(json.dumps({"topic": topic, "event": "phx_join", "payload": payload, "ref": ref,
                                  "join_ref": ref}))
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        frame: dict[str, Any] = json.loads(msg.data)
        if frame["event"] == "phx_reply" and frame["ref"] == ref:
            return frame


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in exporter.get_finished_spans()
            if s.parent is not None and s.parent.span_id == parent.context.span_id]


async def test_a_join_spans_from_its_frame_to_its_reply_with_the_token_check_inside(
        client: TestClient[Any, Any], spans: InMemorySpanExporter) -> None:
    async with client.ws_connect("/realtime/v1/websocket", params={"apikey": token(), "vsn": "1.0.0"}) as ws:
        reply = await join(ws, "realtime:lobby", {"config": {}}, "1")
        assert reply["payload"]["status"] == "ok"
    [span] = named(spans, "realtime.join")
    assert span.attributes is not None
    assert dict(span.attributes) == {"topic": "realtime:lobby", "private": False, "status": "ok"}
    assert span.status.status_code is not StatusCode.ERROR
    [verify] = children(spans, span)
    assert verify.name == "realtime.verify_token"
    assert span.start_time is not None and verify.start_time is not None and span.end_time is not None
    assert span.start_time <= verify.start_time and verify.end_time is not None and verify.end_time <= span.end_time


async def test_a_refused_join_is_an_error_span_and_its_failed_token_check_records_why(
        client: TestClient[Any, Any], spans: InMemorySpanExporter) -> None:
    async with client.ws_connect("/realtime/v1/websocket", params={"apikey": token(), "vsn": "1.0.0"}) as ws:
        expired = token(exp_in=-60)
        reply = await join(ws, "realtime:lobby", {"config": {}, "access_token": expired}, "7")
        assert reply["payload"]["status"] == "error"
    [span] = named(spans, "realtime.join")
    assert span.attributes is not None and span.attributes["status"] == "error"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == reply["payload"]["response"]["reason"]
    [verify] = children(spans, span)
    assert verify.status.status_code is StatusCode.ERROR
    assert [e.name for e in verify.events] == ["exception"]


async def test_a_join_left_unanswered_ends_abandoned_when_its_socket_closes(spans: InMemorySpanExporter) -> None:
    # a "database" that accepts connections and never answers: the policy check hangs
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    authorizer = ChannelAuthorizer(f"postgresql://postgres@127.0.0.1:{port}/x?connect_timeout=2")
    client = await app_client(authorizer)
    try:
        async with client.ws_connect("/realtime/v1/websocket", params={"apikey": token(), "vsn": "1.0.0"}) as ws:
            await ws.send_str(json.dumps({"topic": "realtime:open:wait", "event": "phx_join",
                                          "payload": {"config": {"private": True}}, "ref": "1", "join_ref": "1"}))
            await wait_until(lambda: tracing._joins or None, 5, "the join to start")
        [span] = await wait_until(lambda: named(spans, "realtime.join") or None, 5, "the join span to end")
        assert span.attributes is not None and span.attributes["abandoned"] is True
        assert "status" not in span.attributes
        # the check itself ends when the database times out, still a child of the join
        [authorize] = await wait_until(lambda: named(spans, "realtime.authorize") or None, 10, "the check to end")
        assert authorize.parent is not None and span.context is not None
        assert authorize.parent.span_id == span.context.span_id
        assert authorize.attributes is not None and "error" in authorize.attributes
    finally:
        await client.close()
        await authorizer.close()
        silent.close()
    assert tracing._joins == {}


async def test_a_rest_broadcast_is_one_span(client: TestClient[Any, Any], spans: InMemorySpanExporter) -> None:
    resp = await client.post("/api/broadcast/news/events/headline", json={"text": "hi"},
                             headers={"apikey": token("service_role")})
    assert resp.status == 202
    resp = await client.post("/api/broadcast", json={"messages": [{"topic": "news", "event": "e", "payload": {}}]},
                             headers={"apikey": token("service_role")})
    assert resp.status == 202
    resp = await client.post("/api/broadcast/news/events/headline", json={})
    assert resp.status == 401
    single, batch, refused = named(spans, "realtime.rest.broadcast")
    assert single.attributes is not None and dict(single.attributes) == {
        "topic": "realtime:news", "event": "headline", "http.response.status_code": 202}
    assert batch.attributes is not None and dict(batch.attributes) == {"http.response.status_code": 202}
    assert refused.attributes is not None and refused.attributes["http.response.status_code"] == 401


@pytest.fixture(scope="module")
def policy_db(pg_cluster: Any) -> Iterator[str]:
    name = f"rc_tracing_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_cluster, name)
    install_auth_helpers(dsn)

    async def setup() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await migrate(conn)
            await conn.execute(POLICY_SQL)

    asyncio.run(setup())
    yield dsn
    drop_database(pg_cluster, name)


async def test_a_private_join_has_its_policy_check_as_a_child(policy_db: str, spans: InMemorySpanExporter) -> None:
    authorizer = ChannelAuthorizer(policy_db)
    client = await app_client(authorizer)
    try:
        async with client.ws_connect("/realtime/v1/websocket", params={"apikey": token(), "vsn": "1.0.0"}) as ws:
            granted = await join(ws, "realtime:open:hall", {"config": {"private": True}}, "1")
            denied = await join(ws, "realtime:closed:vault", {"config": {"private": True}}, "2")
    finally:
        await client.close()
        await authorizer.close()
    assert granted["payload"]["status"] == "ok" and denied["payload"]["status"] == "error"
    joins = {s.attributes["topic"]: s for s in named(spans, "realtime.join") if s.attributes is not None}
    assert set(joins) == {"realtime:open:hall", "realtime:closed:vault"}
    for topic, expected in (("realtime:open:hall", "broadcast_read"), ("realtime:closed:vault", "")):
        span = joins[topic]
        assert span.attributes is not None and span.attributes["private"] is True
        kids = {s.name: s for s in children(spans, span)}
        assert set(kids) == {"realtime.verify_token", "realtime.authorize"}
        authorize = kids["realtime.authorize"]
        assert authorize.attributes is not None
        assert dict(authorize.attributes) == {"topic": topic, "purpose": "join", "checks": "broadcast_read",
                                              "granted": expected}
        assert span.end_time is not None and authorize.end_time is not None
        assert authorize.end_time <= span.end_time  # the reply waited for the check
    assert joins["realtime:closed:vault"].status.status_code is StatusCode.ERROR


def test_without_an_exporter_nothing_imports_opentelemetry() -> None:
    code = (
        "import sys\n"
        "import realtime_channels.cli, realtime_channels.transport.app, realtime_channels.cdc.changes\n"
        "from realtime_channels import tracing\n"
        "assert tracing.configure_from_env() is False\n"
        "with tracing.span('x', a=1) as s:\n"
        "    s.set_attribute('b', 2)\n"
        "assert not tracing.ENABLED\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_SERVICE_NAME"] = "named-but-not-exported"  # a name alone does not turn tracing on
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_or_none_exporter_leaves_tracing_off() -> None:
    assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "none"}) is False
    assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "zipkin-nope"}) is False
    assert tracing.configure_from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}) is False
    assert not tracing.ENABLED


async def test_the_console_exporter_configured_from_the_environment_writes_the_servers_spans(
        tmp_path: Any) -> None:
    server: ServerProc = start_server(str(tmp_path), OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="rc-traced",
                                      OTEL_BSP_SCHEDULE_DELAY="50")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.http_url}/api/broadcast/console/events/e", json={},
                                 headers={"apikey": server.service_key}) as resp:
                assert resp.status == 202

        def exported() -> dict[str, Any] | None:
            for line in server.log().splitlines():
                if line.startswith("{") and '"realtime.rest.broadcast"' in line:
                    return dict(json.loads(line))
            return None

        span = await wait_until(exported, 10, "the exported span")
    finally:
        server.stop()
    assert span["name"] == "realtime.rest.broadcast"
    assert span["attributes"]["topic"] == "realtime:console"
    assert span["resource"]["attributes"]["service.name"] == "rc-traced"
