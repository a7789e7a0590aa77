"""HTTP API: REST broadcast (batch + single), auth, CORS, health (protocol.md §1.7, §1.8, §4.6)."""

from __future__ import annotations

import asyncio
import http.client
import json
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import pytest
from support import ServerProc, make_token
from rawclient import V1, V2, Frame, Pred, RawClient, kind4, open_client, sub_topic, unique_topic, user_broadcast
from rawhttp import Resp
from rawhttp import http_request as request

PREFIXES = ["", "/realtime/v1"]
UNSUPPORTED = {"error": "Unsupported Media Type. Use application/json or application/octet-stream"}


def auth(server: ServerProc) -> dict[str, str]:
    """What realtime-js sends: apikey header plus a Bearer token (§4.6)."""
    return {"apikey": server.anon_key, "Authorization": f"Bearer {server.anon_key}"}


async def post_json(server: ServerProc, path: str, value: Any, headers: Mapping[str, str] | None = None) -> Resp:
    hdrs = {"Content-Type": "application/json", **(auth(server) if headers is None else headers)}
    return await request(server, "POST", path, headers=hdrs, body=json.dumps(value).encode())


def single_path(topic: str, event: str, prefix: str = "") -> str:
    return f"{prefix}/api/broadcast/{quote(sub_topic(topic), safe='')}/events/{quote(event, safe='')}"


def assert_rest_delivery(receiver: RawClient, frame: Any, topic: str, expected: dict[str, Any]) -> None:
    """§4.3 REST rows: V1 gets the object verbatim; V2 text or an equivalent kind-4 frame."""
    if receiver.vsn == V1:
        assert frame.value == receiver.wire(None, None, topic, "broadcast", expected)
    elif frame.is_binary:
        assert frame.kind == 4 and frame.topic == topic
        assert frame.broadcast_view() == expected
    else:
        assert frame.value[:4] == [None, None, topic, "broadcast"]
        assert frame.payload == expected


def is_broadcast(f: Frame) -> bool:
    return bool(f.event == "broadcast")


async def rest_marker(server: ServerProc, *topics: str) -> Pred:
    """Post a marker broadcast to each topic after the request under test. REST messages are
    published in request order, so a subscriber gets its marker after anything earlier."""
    event = f"marker-{uuid.uuid4().hex[:8]}"
    body = {"messages": [{"topic": sub_topic(t), "event": event, "payload": {}} for t in topics]}
    resp = await post_json(server, "/api/broadcast", body)
    assert (resp.status, resp.body) == (202, b"")
    return user_broadcast(event)


# --- batch (§1.8) -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.compat(59, 66)
async def test_batch_is_accepted_and_delivered_to_every_subscriber(server: ServerProc, prefix: str) -> None:
    t1, t2 = unique_topic("rest"), unique_topic("rest")
    msg_id = str(uuid.uuid4())
    body = {
        "messages": [
            {"topic": sub_topic(t1), "event": "cursor", "payload": {"x": 1}},
            {"topic": sub_topic(t2), "event": "note", "payload": {"t": "hi"}, "id": msg_id},
            {"topic": sub_topic(t1), "event": "cursor", "payload": {"x": 2}, "private": False},
        ]
    }
    async with open_client(server, V1) as a, open_client(server, V2) as b, open_client(server, V2) as c:
        await a.join_ok(t1)
        await b.join_ok(t1, {"broadcast": {"self": False}})  # self does not apply to REST (§4.6)
        await c.join_ok(t2)
        resp = await post_json(server, f"{prefix}/api/broadcast", body)
        assert (resp.status, resp.body) == (202, b"")
        for r in (a, b):
            for x in (1, 2):
                frame = await r.expect(is_broadcast)
                assert_rest_delivery(r, frame, t1, {"payload": {"x": x}, "event": "cursor", "type": "broadcast"})
        frame = await c.expect(is_broadcast)
        assert_rest_delivery(
            c, frame, t2, {"payload": {"t": "hi"}, "event": "note", "type": "broadcast", "meta": {"id": msg_id}}
        )
        marker = await rest_marker(server, t1, t2)
        for r in (a, b, c):
            await r.assert_nothing_before(marker)


async def test_batch_private_message_without_database_is_dropped_but_accepted(server: ServerProc) -> None:
    topic = unique_topic("rest")
    async with open_client(server, V2) as c:
        await c.join_ok(topic)
        body = {"messages": [{"topic": sub_topic(topic), "event": "secret", "payload": {"s": 1}, "private": True}]}
        resp = await post_json(server, "/api/broadcast", body)
        assert (resp.status, resp.body) == (202, b"")
        # Private and public streams are separate (§3.1).
        await c.assert_nothing_before(await rest_marker(server, topic))


@pytest.mark.compat(60)
async def test_batch_validation_errors_are_per_message_and_reject_the_batch(server: ServerProc) -> None:
    topic = unique_topic("rest")
    body = {
        "messages": [
            {"topic": sub_topic(topic)},
            {"payload": {"a": 1}},
            {"topic": sub_topic(topic), "event": "ok", "payload": {"fine": True}},
        ]
    }
    async with open_client(server, V2) as c:
        await c.join_ok(topic)
        resp = await post_json(server, "/api/broadcast", body)
        assert resp.status == 422
        assert resp.json() == {
            "errors": {
                "messages": [
                    {"payload": ["can't be blank"], "event": ["can't be blank"]},
                    {"topic": ["can't be blank"], "event": ["can't be blank"]},
                    {},
                ]
            }
        }
        await c.assert_nothing_before(await rest_marker(server, topic))  # nothing of the batch was sent


async def test_oversize_rest_payloads_are_422(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_PAYLOAD_SIZE_IN_KB="1")
    topic = unique_topic("rest")
    big = {"data": "z" * 3000}
    async with open_client(srv, V2) as c:
        await c.join_ok(topic)
        batch = {
            "messages": [
                {"topic": sub_topic(topic), "event": "big", "payload": big},
                {"topic": sub_topic(topic), "event": "small", "payload": {"s": 1}},
            ]
        }
        resp = await post_json(srv, "/api/broadcast", batch)
        assert resp.status == 422
        assert resp.json() == {"errors": {"messages": [{"payload": ["Payload size exceeds tenant limit"]}, {}]}}
        resp = await post_json(srv, single_path(topic, "big"), big)
        assert resp.status == 422
        assert resp.json() == {"errors": {"payload": ["Payload size exceeds tenant limit"]}}
        resp = await request(
            srv,
            "POST",
            single_path(topic, "bigbin"),
            headers={**auth(srv), "Content-Type": "application/octet-stream"},
            body=b"\x01" * 3000,
        )
        assert resp.status == 422
        assert resp.json() == {"errors": {"payload": ["Payload size exceeds tenant limit"]}}
        await c.assert_nothing_before(await rest_marker(srv, topic))


# --- single (§1.8) ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.compat(61, 66)
async def test_single_json_with_url_encoded_topic(server: ServerProc, prefix: str) -> None:
    topic = unique_topic("room:1")  # arrives as room%3A1-… (encodeURIComponent)
    async with open_client(server, V1) as v1, open_client(server, V2) as v2:
        await v1.join_ok(topic)
        await v2.join_ok(topic)
        path = single_path(topic, "ping", prefix)
        assert "%3A" in path
        resp = await post_json(server, path, {"x": 1})
        assert (resp.status, resp.body) == (202, b"")
        frame = await v1.expect(is_broadcast)
        assert frame.value == v1.wire(None, None, topic, "broadcast", {"event": "ping", "payload": {"x": 1}, "type": "broadcast"})
        frame = await v2.expect(is_broadcast)
        if frame.is_binary:  # §4.3: kind 4, encoding 1, no metadata
            assert frame.raw[:5] == kind4(topic, "ping", b"", 1)[:5]
            assert frame.metadata == b"" and frame.encoding == 1
        assert frame.broadcast_view() == {"type": "broadcast", "event": "ping", "payload": {"x": 1}}


async def test_single_url_encoded_event_and_charset_parameter(server: ServerProc) -> None:
    topic = unique_topic("rest")
    async with open_client(server, V1) as c:
        await c.join_ok(topic)
        resp = await request(
            server,
            "POST",
            single_path(topic, "my event/ü"),
            headers={**auth(server), "Content-Type": "application/json; charset=utf-8"},
            body=b"{}",
        )
        assert (resp.status, resp.body) == (202, b"")
        frame = await c.expect(is_broadcast)
        assert frame.payload == {"event": "my event/ü", "payload": {}, "type": "broadcast"}


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.compat(62, 66)
async def test_single_octet_stream_reaches_v2_unchanged_and_skips_v1(server: ServerProc, prefix: str) -> None:
    topic = unique_topic("rest")
    data = b"\x00\x01\x02binary\xff\xfe" + bytes(range(200))
    async with open_client(server, V1) as v1, open_client(server, V2) as v2:
        await v1.join_ok(topic)
        await v2.join_ok(topic)
        resp = await request(
            server,
            "POST",
            single_path(topic, "blob", prefix),
            headers={**auth(server), "Content-Type": "application/octet-stream"},
            body=data,
        )
        assert (resp.status, resp.body) == (202, b"")
        frame = await v2.expect(is_broadcast)
        assert frame.raw == kind4(topic, "blob", data, 0)
        await v1.assert_nothing_before(await rest_marker(server, topic))


async def test_single_octet_stream_empty_body(server: ServerProc) -> None:
    topic = unique_topic("rest")
    async with open_client(server, V2) as v2:
        await v2.join_ok(topic)
        resp = await request(
            server,
            "POST",
            single_path(topic, "nothing"),
            headers={**auth(server), "Content-Type": "application/octet-stream"},
            body=b"",
        )
        assert (resp.status, resp.body) == (202, b"")
        assert (await v2.expect(is_broadcast)).raw == kind4(topic, "nothing", b"", 0)


def _post_without_content_type(server: ServerProc, path: str, body: bytes) -> tuple[int, bytes]:
    # http.client adds only Host/Content-Length/Accept-Encoding: no Content-Type at all.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers={"apikey": server.anon_key})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


async def test_single_without_content_type_sends_empty_object(server: ServerProc) -> None:
    topic = unique_topic("rest")
    async with open_client(server, V1) as v1:
        await v1.join_ok(topic)
        status, body = await asyncio.to_thread(
            _post_without_content_type, server, single_path(topic, "legacy"), b'{"ignored":true}'
        )
        assert (status, body) == (202, b"")
        frame = await v1.expect(is_broadcast)
        assert frame.value == v1.wire(None, None, topic, "broadcast", {"event": "legacy", "payload": {}, "type": "broadcast"})


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
@pytest.mark.compat(63)
async def test_single_unsupported_media_type_is_415(server: ServerProc, content_type: str) -> None:
    topic = unique_topic("rest")
    async with open_client(server, V2) as c:
        await c.join_ok(topic)
        resp = await request(
            server,
            "POST",
            single_path(topic, "e"),
            headers={**auth(server), "Content-Type": content_type},
            body=b"hello",
        )
        assert resp.status == 415
        assert resp.json() == UNSUPPORTED
        await c.assert_nothing_before(await rest_marker(server, topic))


# --- authentication (§1.8, checklist 64) ------------------------------------------------------


def _bad_auth_cases() -> list[Any]:
    return [
        pytest.param({}, id="no-token"),
        pytest.param({"apikey": "potato"}, id="apikey-garbage"),
        pytest.param({"apikey": make_token(exp_in=-10)}, id="apikey-expired"),
        pytest.param({"Authorization": "Bearer potato"}, id="bearer-garbage"),
        pytest.param({"Authorization": f"Bearer {make_token(secret='x' * 40)}"}, id="bearer-bad-signature"),
    ]


@pytest.mark.parametrize("headers", _bad_auth_cases())
@pytest.mark.parametrize("endpoint", ["batch", "single"])
@pytest.mark.compat(64)
async def test_rest_without_valid_token_is_401(server: ServerProc, headers: dict[str, str], endpoint: str) -> None:
    topic = unique_topic("rest")
    async with open_client(server, V2) as c:
        await c.join_ok(topic)
        if endpoint == "batch":
            body: Any = {"messages": [{"topic": sub_topic(topic), "event": "e", "payload": {}}]}
            resp = await post_json(server, "/api/broadcast", body, headers)
        else:
            resp = await post_json(server, single_path(topic, "e"), {}, headers)
        assert resp.status == 401
        assert resp.json() == {"message": "Unauthorized"}
        await c.assert_nothing_before(await rest_marker(server, topic))


@pytest.mark.compat(64)
async def test_bearer_is_preferred_over_apikey(server: ServerProc) -> None:
    topic = unique_topic("rest")
    async with open_client(server, V2) as c:
        await c.join_ok(topic)
        path = single_path(topic, "e")
        good_bearer = {"Authorization": f"Bearer {server.anon_key}", "apikey": "potato"}
        assert (await post_json(server, path, {"n": 1}, good_bearer)).status == 202
        lower_scheme = {"Authorization": f"bearer {server.anon_key}", "apikey": "potato"}
        assert (await post_json(server, path, {"n": 2}, lower_scheme)).status == 202
        bad_bearer = {"Authorization": "Bearer potato", "apikey": server.anon_key}
        resp = await post_json(server, path, {"n": 3}, bad_bearer)
        assert (resp.status, resp.json()) == (401, {"message": "Unauthorized"})
        apikey_only = {"apikey": server.service_key}
        assert (await post_json(server, path, {"n": 4}, apikey_only)).status == 202
        got = [(await c.expect(is_broadcast)).broadcast_view()["payload"] for _ in range(3)]
        assert got == [{"n": 1}, {"n": 2}, {"n": 4}]
        await c.assert_nothing_before(await rest_marker(server, topic))


# --- CORS, rate headers, health (§1.7, §1.8) -----------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_cors_header_on_broadcast_responses(server: ServerProc, prefix: str) -> None:
    topic = unique_topic("rest")
    headers = {**auth(server), "Origin": "http://localhost:3000"}
    resp = await post_json(server, single_path(topic, "e", prefix), {}, headers)
    assert resp.status == 202
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    resp = await post_json(
        server, f"{prefix}/api/broadcast", {"messages": [{"topic": sub_topic(topic), "event": "e", "payload": {}}]}, headers
    )
    assert resp.status == 202
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    resp = await post_json(server, f"{prefix}/api/broadcast", {"messages": []}, {"Origin": "http://x"})
    assert resp.status == 401
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"  # errors too, or browsers hide them


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("endpoint", ["batch", "single"])
async def test_options_preflight(server: ServerProc, prefix: str, endpoint: str) -> None:
    path = f"{prefix}/api/broadcast" if endpoint == "batch" else single_path(unique_topic("rest"), "e", prefix)
    resp = await request(
        server,
        "OPTIONS",
        path,
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, apikey, content-type, x-client-info",
        },
    )
    assert resp.status in (200, 204)
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    methods = [m.strip().upper() for m in resp.headers.get("Access-Control-Allow-Methods", "").split(",")]
    assert "POST" in methods or "*" in methods
    allowed = {h.strip().lower() for h in resp.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert "*" in allowed or {"authorization", "apikey", "content-type", "x-client-info"} <= allowed


async def test_rate_limit_headers_on_broadcast_responses(server: ServerProc) -> None:
    topic = unique_topic("rest")
    for path, body in [
        (single_path(topic, "e"), {}),
        ("/api/broadcast", {"messages": [{"topic": sub_topic(topic), "event": "e", "payload": {}}]}),
    ]:
        resp = await post_json(server, path, body)
        assert resp.status == 202
        for name in ("x-rate-rolling", "x-rate-limit", "x-rate-limit-remaining"):
            value = resp.headers.get(name)
            assert value is not None, f"missing {name}: {dict(resp.headers)}"
            int(value)


async def test_healthcheck(server: ServerProc) -> None:
    resp = await request(server, "GET", "/healthcheck")
    assert (resp.status, resp.body) == (200, b"ok")
    assert resp.headers.get("Content-Type", "").startswith("text/plain")


async def test_api_ping(server: ServerProc) -> None:
    resp = await request(server, "GET", "/api/ping")
    assert resp.status == 200
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    assert resp.json() == {"message": "Success"}


async def test_single_ignores_unknown_query_parameters(server: ServerProc) -> None:
    # Parameters the server does not know are ignored (§1.8); `persist` is known (§4.9) and
    # is refused on a public channel, which tests/private/test_persist_clients.py covers.
    topic = unique_topic("rest")
    async with open_client(server, V1) as c:
        await c.join_ok(topic)
        for query in ("?x=1", "?private=false&x=1", "?persisted=true&ttl%5Bx%5D=60"):
            resp = await post_json(server, single_path(topic, "q") + query, {"q": query})
            assert (resp.status, resp.body) == (202, b"")
            assert (await c.expect(is_broadcast)).payload["payload"] == {"q": query}


async def test_batch_payload_must_be_an_object(server: ServerProc) -> None:
    topic = unique_topic("rest")
    async with open_client(server, V2) as c:
        await c.join_ok(topic)
        body = {
            "messages": [
                {"topic": sub_topic(topic), "event": "e", "payload": "not an object"},
                {"topic": sub_topic(topic), "event": "e", "payload": {"ok": 1}},
            ]
        }
        resp = await post_json(server, "/api/broadcast", body)
        assert resp.status == 422
        errors = resp.json()["errors"]["messages"]
        assert list(errors[0]) == ["payload"] and errors[1] == {}
        await c.assert_nothing_before(await rest_marker(server, topic))
