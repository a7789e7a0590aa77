"""The transport (transport/) on a real aiohttp test server, one node on the in-memory backbone,
with aiohttp's own WebSocket client as the peer.

Checked: every session effect has a handler; the upgrade's refusals (and their log lines); the
one close path (idle timeout, drain with its notice); /health from the typed backbone state; a
REST refusal's body from the error tree; the presence diff before the track reply.
"""

from __future__ import annotations

import json
import logging
import typing
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from realtime_channels import errors
from realtime_channels.auth import JwtVerifier, mint_token
from realtime_channels.config import Settings
from realtime_channels.node import Node
from realtime_channels.protocol import session as s
from realtime_channels.pubsub.memory import MemoryPubSub
from realtime_channels.transport import effects
from realtime_channels.transport.app import build_app, shutdown_connections

SECRET = "transport-unit-test-secret-of-32-chars!!"
TOPIC = "realtime:room1"


def token(role: str = "anon") -> str:
    import time

    return mint_token(SECRET, role, now=time.time(), exp_seconds=3600)


async def make_client(**overrides: Any) -> TestClient[Any, Any]:
    settings = Settings(jwt_secret=SECRET, connect_error_backoff_ms=0, join_error_backoff_ms=0, **overrides)
    node = Node(settings, MemoryPubSub(), "unit")
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, node, JwtVerifier(SECRET, None))))
    await client.start_server()
    return client


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    c = await make_client()
    yield c
    await c.close()


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=3)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    frame: dict[str, Any] = json.loads(msg.data)
    return frame


async def push(ws: aiohttp.ClientWebSocketResponse, event: str, payload: Any, ref: str, topic: str = TOPIC) -> None:
    await ws.send_str(json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": "1"}))


def test_every_session_effect_has_exactly_one_handler() -> None:
    assert set(effects.HANDLERS) == set(typing.get_args(s.Effect))


@pytest.mark.parametrize(("query", "status", "body"), [
    ({"vsn": "3.0.0", "apikey": "x"}, 403, b""),
    ({"vsn": "2.0.0"}, 401, b'{"error":"API key is missing"}'),
    ({"vsn": "2.0.0", "apikey": "potato"}, 401, b'{"error":"The token provided is not a valid JWT"}'),
])
async def test_refused_upgrades_answer_exactly_and_are_logged(
        client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture, query: dict[str, str], status: int,
        body: bytes) -> None:
    with caplog.at_level(logging.INFO, logger="realtime_channels.transport"):
        resp = await client.get("/realtime/v1/websocket", params=query,
                                headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                         "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert resp.status == status
        assert await resp.read() == body
    [record] = [r for r in caplog.records if "refused WebSocket upgrade" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert "potato" not in record.getMessage()


async def test_a_track_reply_follows_its_presence_diff(client: TestClient[Any, Any]) -> None:
    async with client.ws_connect("/socket/websocket", params={"apikey": token(), "vsn": "1.0.0"}) as ws:
        await push(ws, "phx_join", {"config": {"presence": {"enabled": True, "key": "me"}}}, "1")
        assert (await recv(ws))["event"] == "phx_reply"
        assert (await recv(ws))["event"] == "presence_state"
        await push(ws, "presence", {"type": "presence", "event": "track", "payload": {"a": 1}}, "2")
        diff, reply = await recv(ws), await recv(ws)
        assert diff["event"] == "presence_diff" and list(diff["payload"]["joins"]) == ["me"]
        assert reply["event"] == "phx_reply" and reply["ref"] == "2"


async def test_an_idle_socket_is_closed_through_the_close_path() -> None:
    c = await make_client(idle_timeout_ms=200)
    try:
        async with c.ws_connect("/socket/websocket", params={"apikey": token()}) as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (1000, "idle timeout")
    finally:
        await c.close()


async def test_drain_tells_every_channel_then_closes_with_1012(client: TestClient[Any, Any]) -> None:
    async with client.ws_connect("/socket/websocket", params={"apikey": token()}) as ws:
        await push(ws, "phx_join", {}, "1")
        assert (await recv(ws))["event"] == "phx_reply"
        await shutdown_connections(client.server.app)
        notice = await recv(ws)
        assert notice["event"] == "system"
        assert notice["payload"] == {"extension": "system", "status": "ok", "message": "Server requested disconnect"}
        msg = await ws.receive(timeout=3)
        assert msg.type is aiohttp.WSMsgType.CLOSE and (msg.data, msg.extra) == (1012, "server restart")


async def test_health_reports_the_typed_backbone_state(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/health")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    body = await resp.json()
    assert body == {"node": "unit", "pubsub": "connected", "nodes": 1, "connections": 0, "status": "ok"}
    async with client.ws_connect("/socket/websocket", params={"apikey": token()}):
        assert (await (await client.get("/health")).json())["connections"] == 1


async def test_rest_refusals_come_from_the_error_tree(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/api/broadcast", json={"messages": []})
    assert resp.status == 401 and await resp.json() == {"message": errors.RestUnauthorized.message}
    resp = await client.post("/api/broadcast", data=b"{not json",
                             headers={"Authorization": f"Bearer {token('service_role')}"})
    assert resp.status == 400 and await resp.json() == {"message": "Request body is not valid JSON"}
    resp = await client.post("/api/broadcast/room/events/e", data=b"x",
                             headers={"apikey": token(), "Content-Type": "text/plain"})
    assert resp.status == 415
    assert await resp.json() == {"error": "Unsupported Media Type. Use application/json or application/octet-stream"}


def _error_texts() -> set[str]:
    texts: set[str] = set()
    for value in vars(errors).values():
        if isinstance(value, type):
            for name in ("message", "handshake_message", "close_reason", "BLANK", "INVALID", "TOO_BIG",
                         "DISCONNECT", "REPLICATION_READY"):
                text = vars(value).get(name)
                if isinstance(text, str) and len(text) > 8:
                    texts.add(text)
    return texts


def test_client_facing_texts_are_written_once_in_errors() -> None:
    """The transport takes what a client or REST caller reads from the error tree, so a text
    is changed in one place (string literals repeating one are refused)."""
    import ast
    from pathlib import Path

    import realtime_channels.transport as transport

    texts = _error_texts()
    assert "Request body is not valid JSON" in texts and "Too many connected users" in texts
    repeated = []
    for path in sorted(Path(transport.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in texts:
                repeated.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert repeated == []
