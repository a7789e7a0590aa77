"""Conformance: the official JS clients (supabase-js / realtime-js 2.119.1) against our server.

vsn 2.0.0 clients are ``createClient(http_url, key)`` (WebSocket on ``/realtime/v1/websocket``,
REST under ``/realtime/v1/api``); vsn 1.0.0 clients are ``new RealtimeClient(ws_url + '/socket',
{vsn: '1.0.0'})`` (``/socket/websocket``, REST under ``/api``). See protocol.md §1.1, §9.1.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from support import make_token
from peers import (  # noqa: F401 - node is a fixture
    NodePeer,
    PeerError,
    is_broadcast,
    is_presence,
    is_status,
    node,
    unique_topic,
)

VSNS = ["2.0.0", "1.0.0"]

# protocol.md §3.5: the reason realtime-js surfaces is Object.values(response).join(', '),
# i.e. exactly the server's "reason" string.
TOKEN_CASES: dict[str, tuple[Any, str]] = {
    "expired": (lambda: make_token(exp_in=-120), r"InvalidJWTToken: Token has expired (\d+) seconds ago"),
    "bad_signature": (
        lambda: make_token(secret="a-different-secret-that-is-also-32-chars-long"),
        re.escape("JwtSignatureError: Failed to validate JWT signature"),
    ),
    "malformed": (lambda: "potato", re.escape("MalformedJWT: The token provided is not a valid JWT")),
}


@pytest.mark.parametrize("receiver_vsn", VSNS)
@pytest.mark.parametrize("sender_vsn", VSNS)
@pytest.mark.compat(49)
async def test_broadcast_js_to_js(server: Any, node: NodePeer, sender_vsn: str, receiver_vsn: str) -> None:
    topic = unique_topic("js-js")
    await node.add_client("sender", server, sender_vsn)
    await node.add_client("receiver", server, receiver_vsn)
    await node.subscribe("receiver", "rx", topic)
    await node.subscribe("sender", "tx", topic)

    payload = {"x": 1, "nested": {"ok": True, "items": [1, "two", None]}, "text": "héllo ✓"}
    assert await node.call("send", ch="tx", event="cursor", payload=payload) == "ok"

    got = await node.wait_broadcast("rx", "cursor")
    assert got["payload"] == payload
    assert got["binary"] is False
    assert got["keys"] == ["event", "payload", "type"]

    # self:false (default): the sender must not get its own message. Barrier: the receiver
    # answers; the server wrote any echo to the sender's socket before that answer.
    await node.call("send", ch="rx", event="answer", payload={"n": 1})
    await node.wait_broadcast("tx", "answer")
    assert node.broadcasts("tx", "cursor") == []


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(50)
async def test_self_and_ack(server: Any, node: NodePeer, vsn: str) -> None:
    topic = unique_topic("self-ack")
    await node.add_client("c", server, vsn)
    await node.subscribe("c", "me", topic, config={"broadcast": {"self": True, "ack": True}})

    # With ack:true, send() only resolves "ok" on the server's reply (otherwise "timed out").
    result = await node.call("send", ch="me", event="echo", payload={"n": 7}, timeout=4000)
    assert result == "ok"
    got = await node.wait_broadcast("me", "echo")
    assert got["payload"] == {"n": 7}


@pytest.mark.parametrize("vsn", VSNS)
async def test_ack_without_self(server: Any, node: NodePeer, vsn: str) -> None:
    topic = unique_topic("ack-only")
    await node.add_client("c", server, vsn)
    await node.add_client("other", server, "2.0.0")
    await node.subscribe("other", "rx", topic)
    await node.subscribe("c", "tx", topic, config={"broadcast": {"self": False, "ack": True}})
    await node.subscribe("c", "probe", unique_topic("probe"), config={"broadcast": {"self": True, "ack": True}})

    assert await node.call("send", ch="tx", event="acked", payload={"k": "v"}, timeout=4000) == "ok"
    await node.wait_broadcast("rx", "acked", {"k": "v"})
    # Barrier on the sender's own socket: a later self-broadcast comes back to it.
    assert await node.call("send", ch="probe", event="probe", payload={}, timeout=4000) == "ok"
    await node.wait_broadcast("probe", "probe")
    assert node.broadcasts("tx", "acked") == []


@pytest.mark.compat(54)
async def test_binary_broadcast_between_v2_clients(server: Any, node: NodePeer) -> None:
    topic = unique_topic("bin")
    await node.add_client("sender", server, "2.0.0")
    await node.add_client("v2", server, "2.0.0")
    await node.add_client("v2socket", server, "2.0.0", kind="realtime")  # /socket/websocket
    await node.add_client("v1", server, "1.0.0")
    await node.subscribe("v2", "v2rx", topic)
    await node.subscribe("v2socket", "v2srx", topic)
    await node.subscribe("v1", "v1rx", topic)
    await node.subscribe("sender", "tx", topic)

    data = bytes([0, 255, 128, 1, 0x7B]) + bytes(range(256)) + "é".encode()
    assert await node.call("send", ch="tx", event="blob", binary=data.hex()) == "ok"
    assert await node.call("send", ch="tx", event="marker", payload={"after": "blob"}) == "ok"

    for ch in ("v2rx", "v2srx"):
        got = await node.wait_broadcast(ch, "blob")
        assert got["binary"] is True
        assert bytes.fromhex(got["payload"]) == data
        await node.wait_broadcast(ch, "marker")
    # protocol.md §4.3: V1 cannot carry bytes, so the blob is skipped for V1 receivers; the
    # marker sent after it on the same channel proves the server is past it.
    await node.wait_broadcast("v1rx", "marker", {"after": "blob"})
    assert node.broadcasts("v1rx", "blob") == []


@pytest.mark.parametrize("vsn", VSNS)
async def test_http_send_json(server: Any, node: NodePeer, vsn: str) -> None:
    topic = unique_topic("http")
    await node.add_client("rest", server, vsn)
    await node.add_client("receiver", server, vsn)
    await node.subscribe("receiver", "rx", topic)
    # httpSend needs no subscription: the channel exists only locally.
    await node.call("channel", client="rest", ch="tx", topic=topic)

    result = await node.call("httpSend", ch="tx", event="via-http", payload={"a": [1, 2, 3]})
    assert result == {"success": True}
    got = await node.wait_broadcast("rx", "via-http")
    assert got["payload"] == {"a": [1, 2, 3]}
    assert got["keys"] == ["event", "payload", "type"]


@pytest.mark.compat(61)
async def test_http_send_binary_and_encoded_topic(server: Any, node: NodePeer) -> None:
    # A colon in the sub-topic travels URL-encoded (room%3A…) — protocol.md §1.8.
    topic = "room:" + unique_topic("http-bin")
    await node.add_client("rest", server, "2.0.0")
    await node.add_client("receiver", server, "2.0.0")
    await node.subscribe("receiver", "rx", topic)
    await node.call("channel", client="rest", ch="tx", topic=topic)

    data = b"\x00\x01binary\xff\xfe"
    assert await node.call("httpSend", ch="tx", event="bytes", binary=data.hex()) == {"success": True}
    got = await node.wait_broadcast("rx", "bytes")
    assert got["binary"] is True
    assert bytes.fromhex(got["payload"]) == data


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(59)
async def test_send_falls_back_to_rest_when_not_joined(server: Any, node: NodePeer, vsn: str) -> None:
    topic = unique_topic("fallback")
    await node.add_client("receiver", server, "2.0.0")
    await node.subscribe("receiver", "rx", topic)
    await node.add_client("offline", server, vsn)
    await node.call("channel", client="offline", ch="tx", topic=topic)

    # Not joined -> realtime-js POSTs {"messages":[…]} to the batch endpoint; 2xx means "ok".
    assert await node.call("send", ch="tx", event="posted", payload={"via": "batch"}) == "ok"
    got = await node.wait_broadcast("rx", "posted")
    assert got["payload"] == {"via": "batch"}
    assert got["keys"] == ["event", "payload", "type"]


@pytest.mark.parametrize("case", sorted(TOKEN_CASES))
@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(32)
async def test_join_token_errors(server: Any, node: NodePeer, vsn: str, case: str) -> None:
    make, pattern = TOKEN_CASES[case]
    await node.add_client("c", server, vsn, token=make())
    status = await node.subscribe("c", "bad", unique_topic("token"), expect="CHANNEL_ERROR")

    match = re.fullmatch(pattern, status["error"] or "")
    assert match, f"unexpected join error {status['error']!r}"
    assert status["cause"] == {"reason": status["error"]}
    if case == "expired":
        assert 110 <= int(match.group(1)) <= 140


@pytest.mark.parametrize("vsn", VSNS)
async def test_valid_access_token_at_join(server: Any, node: NodePeer, vsn: str) -> None:
    topic = unique_topic("good-token")
    user_token = make_token("authenticated", sub="6d4e0a38-0000-4000-8000-000000000001")
    await node.add_client("c", server, vsn, token=user_token)
    await node.add_client("peer", server, "2.0.0")
    await node.subscribe("c", "rx", topic)
    await node.subscribe("peer", "tx", topic)
    await node.call("send", ch="tx", event="hi", payload={})
    await node.wait_broadcast("rx", "hi")


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(45)
async def test_set_auth_with_expired_token_closes_channel(server: Any, node: NodePeer, vsn: str) -> None:
    # protocol.md §3.9: a refreshed token that fails verification shuts the channel down with a
    # system error followed by phx_close; the WebSocket stays open.
    sub = unique_topic("refresh")
    await node.add_client("c", server, vsn, token=make_token())
    await node.subscribe("c", "ch", sub)
    await node.subscribe("c", "probe", unique_topic("probe"), config={"broadcast": {"self": True}})

    await node.call("setAuth", client="c", token=make_token(exp_in=-30))
    system = await node.log.wait_for(
        lambda e: e["type"] == "system" and e["ch"] == "ch", what="the shutdown notice"
    )
    payload = system["payload"]
    assert payload["extension"] == "system" and payload["status"] == "error"
    assert payload["channel"] == sub
    assert re.fullmatch(r"Token has expired \d+ seconds ago", payload["message"]), payload
    await node.log.wait_for(is_status("ch", "CLOSED"), what="CLOSED after phx_close")

    # The socket survived: the other channel still works (it got the same token, so it was
    # shut down too — re-join it with a fresh valid token first).
    await node.log.wait_for(is_status("probe", "CLOSED"), what="probe closed by the same refresh")
    await node.call("setAuth", client="c", token=make_token())
    await node.call("removeChannel", ch="probe")
    await node.subscribe("c", "probe2", unique_topic("probe"), config={"broadcast": {"self": True}})
    await node.call("send", ch="probe2", event="alive", payload={})
    await node.wait_broadcast("probe2", "alive")


@pytest.mark.parametrize("vsn", VSNS)
async def test_unsubscribe_stops_delivery(server: Any, node: NodePeer, vsn: str) -> None:
    topic = unique_topic("leave")
    await node.add_client("leaver", server, vsn)
    await node.add_client("sender", server, "2.0.0")
    await node.add_client("witness", server, "2.0.0")
    await node.subscribe("leaver", "rx", topic)
    await node.subscribe("leaver", "probe", unique_topic("probe"), config={"broadcast": {"self": True}})
    await node.subscribe("witness", "wx", topic)
    await node.subscribe("sender", "tx", topic)

    await node.call("send", ch="tx", event="before", payload={"n": 1})
    await node.wait_broadcast("rx", "before")

    assert await node.call("unsubscribe", ch="rx") == "ok"
    await node.log.wait_for(is_status("rx", "CLOSED"), what="CLOSED after unsubscribe")

    await node.call("send", ch="tx", event="after", payload={"n": 2})
    await node.wait_broadcast("wx", "after")
    # Barrier on the leaver's socket: a self-broadcast on its other channel comes back.
    await node.call("send", ch="probe", event="probe", payload={})
    await node.wait_broadcast("probe", "probe")
    assert node.broadcasts("rx", "after") == []


@pytest.mark.parametrize("vsn", VSNS)
async def test_burst_of_100_keeps_order(server: Any, node: NodePeer, vsn: str) -> None:
    topic = unique_topic("burst")
    await node.add_client("sender", server, vsn)
    await node.add_client("rx2", server, "2.0.0")
    await node.add_client("rx1", server, "1.0.0")
    await node.subscribe("rx2", "r2", topic)
    await node.subscribe("rx1", "r1", topic)
    await node.subscribe("sender", "tx", topic)

    results = await node.call("sendBurst", ch="tx", event="seq", count=100)
    assert results == ["ok"] * 100
    for ch in ("r2", "r1"):
        got = await node.log.wait_count(is_broadcast(ch, "seq"), 100, what=f"100 'seq' on {ch}")
        assert [e["payload"]["i"] for e in got] == list(range(100))


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(75)
async def test_presence_sync_join_leave(server: Any, node: NodePeer, vsn: str) -> None:
    topic = unique_topic("presence")
    await node.add_client("alice", server, vsn)
    await node.add_client("bob", server, vsn)
    await node.subscribe("alice", "a", topic, config={"presence": {"key": "alice"}}, presence=True)
    # presence_state {} after join triggers a sync (protocol.md §5.2, §5.4).
    first_sync = await node.log.wait_for(is_presence("a", "sync"), what="alice's first sync")
    assert first_sync["state"] == {}

    assert await node.call("track", ch="a", payload={"user": "alice", "status": "online"}) == "ok"
    # The tracking client receives its own diff (§5.2).
    own = await node.log.wait_for(is_presence("a", "join", "alice"), what="alice sees herself join")
    assert [_strip(p) for p in own["presences"]] == [{"user": "alice", "status": "online"}]

    # A later joiner gets the current state in presence_state.
    await node.subscribe("bob", "b", topic, config={"presence": {"key": "bob"}}, presence=True)
    joined = await node.log.wait_for(is_presence("b", "join", "alice"), what="bob sees alice")
    assert [_strip(p) for p in joined["presences"]] == [{"user": "alice", "status": "online"}]
    assert isinstance(joined["presences"][0]["presence_ref"], str) and joined["presences"][0]["presence_ref"]
    state = await node.call("presenceState", ch="b")
    assert list(state) == ["alice"]

    assert await node.call("track", ch="b", payload={"user": "bob"}) == "ok"
    await node.log.wait_for(is_presence("a", "join", "bob"), what="alice sees bob join")

    assert await node.call("untrack", ch="a") == "ok"
    left = await node.log.wait_for(is_presence("b", "leave", "alice"), what="bob sees alice leave")
    assert [_strip(p) for p in left["presences"]] == [{"user": "alice", "status": "online"}]
    assert sorted(await node.call("presenceState", ch="b")) == ["bob"]

    # Leaving the channel removes bob's presence for everyone else (§3.6).
    assert await node.call("unsubscribe", ch="b") == "ok"
    await node.log.wait_for(is_presence("a", "leave", "bob"), what="alice sees bob leave")
    assert await node.call("presenceState", ch="a") == {}


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(76)
async def test_presence_retrack_replaces_meta(server: Any, node: NodePeer, vsn: str) -> None:
    topic = unique_topic("retrack")
    await node.add_client("alice", server, vsn)
    await node.add_client("bob", server, vsn)
    await node.subscribe("bob", "b", topic, config={"presence": {"key": "bob"}}, presence=True)
    await node.subscribe("alice", "a", topic, config={"presence": {"key": "alice"}}, presence=True)

    assert await node.call("track", ch="a", payload={"status": "online"}) == "ok"
    await node.log.wait_for(is_presence("b", "join", "alice"))
    assert await node.call("track", ch="a", payload={"status": "away"}) == "ok"

    def away(e: dict[str, Any]) -> bool:
        return is_presence("b", "sync")(e) and [_strip(p) for p in e["state"].get("alice", [])] == [{"status": "away"}]

    await node.log.wait_for(away, what="bob's state showing alice away (one meta)")


async def test_error_for_private_channel_without_database(server: Any, node: NodePeer) -> None:
    # SERVER.md: no RLS in this issue, so a private join is refused with the §3.5 reason.
    sub = unique_topic("private")
    await node.add_client("c", server, "2.0.0")
    status = await node.subscribe("c", "p", sub, config={"private": True}, expect="CHANNEL_ERROR")
    assert status["error"] == f"Unauthorized: You do not have permissions to read from this Channel topic: {sub}"


async def test_http_send_error_is_surfaced(server: Any, node: NodePeer) -> None:
    # An invalid key makes the REST endpoint answer 401 {"message":"Unauthorized"} (§1.8) and
    # realtime-js rejects with body.error || body.message.
    await node.add_client("c", server, "2.0.0", key=make_token(exp_in=-60))
    await node.call("channel", client="c", ch="tx", topic=unique_topic("http-err"))
    with pytest.raises(PeerError, match=r"httpSend failed: Unauthorized$"):
        await node.call("httpSend", ch="tx", event="x", payload={})


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(30)
async def test_postgres_bindings_echoed_without_database(server: Any, node: NodePeer, vsn: str) -> None:
    # realtime-js compares the echoed bindings positionally and reports CHANNEL_ERROR
    # ("mismatch between server and client bindings") unless the server echoes them unchanged
    # with ids (§3.4). Without a database the server then reports the failure (SERVER.md).
    sub = unique_topic("pg")
    bindings = [
        {"event": "INSERT", "schema": "public", "table": "messages", "filter": "room_id=eq.7"},
        {"event": "*", "schema": "public"},
        {"event": "delete", "schema": "audit", "table": "log"},
    ]
    await node.add_client("c", server, vsn)
    await node.subscribe("c", "pg", sub, postgres=bindings)
    system = await node.log.wait_for(lambda e: e["type"] == "system" and e["ch"] == "pg", what="postgres system message")
    assert system["payload"] == {
        "extension": "postgres_changes",
        "status": "error",
        "message": "Unable to subscribe to changes with given parameters. "
        "PostgreSQL is not configured (set REALTIME_DATABASE_URL)",
        "channel": sub,
    }


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(79)
async def test_generated_presence_key(server: Any, node: NodePeer, vsn: str) -> None:
    # No config.presence.key: the server picks a UUID key for the join (§5.3).
    await node.add_client("c", server, vsn)
    await node.subscribe("c", "p", unique_topic("genkey"), presence=True)
    assert await node.call("track", ch="p", payload={"anon": True}) == "ok"
    own = await node.log.wait_for(lambda e: is_presence("p", "join")(e), what="own presence join")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", own["key"]), own["key"]
    assert [_strip(p) for p in own["presences"]] == [{"anon": True}]


def _strip(presence: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in presence.items() if k != "presence_ref"}
