"""Conformance: the official Python ``realtime`` 2.34.1 client (vsn 1.0.0) against our server.

The client is built from ``<http url><path>``; it opens ``<path>/websocket`` and posts REST
broadcasts to ``<path minus /socket>/api/broadcast/...`` (protocol.md §1.1, §9.2). Both the
``/realtime/v1`` and the ``/socket`` mounting are exercised.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from support import make_token
from peers import (  # noqa: F401 - py_clients is a fixture
    PyClient,
    is_broadcast,
    is_presence,
    is_status,
    py_clients,
    unique_topic,
)
from realtime import RealtimeHTTPError
from realtime.types import ChannelEvents, RealtimeAcknowledgementStatus

PATHS = ["/realtime/v1", "/socket"]

MakePy = Callable[..., PyClient]

TOKEN_CASES: dict[str, tuple[Any, str]] = {
    "expired": (lambda: make_token(exp_in=-120), r"InvalidJWTToken: Token has expired (\d+) seconds ago"),
    "bad_signature": (
        lambda: make_token(secret="a-different-secret-that-is-also-32-chars-long"),
        re.escape("JwtSignatureError: Failed to validate JWT signature"),
    ),
    "malformed": (lambda: "potato", re.escape("MalformedJWT: The token provided is not a valid JWT")),
}


async def push_outcome(client: PyClient, ch: str, event: str, payload: dict[str, Any]) -> tuple[str, Any]:
    """Push on a channel and wait for the reply (ok / error / timeout) the client reports."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[tuple[str, Any]] = loop.create_future()

    def settle(status: str) -> Callable[..., None]:
        def callback(*args: Any) -> None:
            if not outcome.done():
                outcome.set_result((status, args[0] if args else None))

        return callback

    push = await client.channels[ch].push(event, payload, timeout=4)
    push.receive(RealtimeAcknowledgementStatus.Ok, settle("ok"))
    push.receive(RealtimeAcknowledgementStatus.Error, settle("error"))
    push.receive(RealtimeAcknowledgementStatus.Timeout, settle("timeout"))
    return await asyncio.wait_for(outcome, 10)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.compat(52)
async def test_broadcast_between_python_clients(py_clients: MakePy, path: str) -> None:
    topic = unique_topic("py-py")
    sender = py_clients("sender", path=path)
    receiver = py_clients("receiver", path="/socket" if path == "/realtime/v1" else "/realtime/v1")
    await receiver.subscribe("rx", topic)
    await sender.subscribe("tx", topic)

    await sender.channels["tx"].send_broadcast("greet", {"hello": "world", "n": [1, 2]})
    got = await receiver.wait_broadcast("rx", "greet")
    assert got["payload"] == {"hello": "world", "n": [1, 2]}
    # The V1 text broadcast is relayed verbatim (§4.1, §4.3); no meta is added.
    assert got["raw"] == {"event": "greet", "payload": {"hello": "world", "n": [1, 2]}}

    # self:false barrier: the receiver answers; no echo may precede the answer at the sender.
    await receiver.channels["rx"].send_broadcast("answer", {})
    await sender.wait_broadcast("tx", "answer")
    assert sender.broadcasts("tx", "greet") == []


async def test_self_and_ack(py_clients: MakePy) -> None:
    client = py_clients("me")
    await client.subscribe("me", unique_topic("py-self"), broadcast={"self": True, "ack": True})

    status, response = await push_outcome(
        client, "me", ChannelEvents.broadcast, {"type": "broadcast", "event": "echo", "payload": {"n": 1}}
    )
    assert status == "ok"
    assert response.postgres_changes is None  # i.e. the reply's response was {}
    got = await client.wait_broadcast("me", "echo")
    assert got["payload"] == {"n": 1}


@pytest.mark.compat(51)
async def test_no_ack_reply_without_ack(py_clients: MakePy) -> None:
    client = py_clients("me")
    await client.subscribe("me", unique_topic("py-noack"), broadcast={"self": True, "ack": False})
    push = await client.channels["me"].push(
        ChannelEvents.broadcast, {"type": "broadcast", "event": "quiet", "payload": {}}, timeout=4
    )
    await client.wait_broadcast("me", "quiet")
    # Barrier: an acked push on another channel of the same socket is answered after the
    # first push was processed, so a (wrong) reply to the first one would be in by then.
    await client.subscribe("acked", unique_topic("py-acked"), broadcast={"self": False, "ack": True})
    status, _ = await push_outcome(
        client, "acked", ChannelEvents.broadcast, {"type": "broadcast", "event": "x", "payload": {}}
    )
    assert status == "ok"
    assert push.received_resp is None


@pytest.mark.parametrize("path", PATHS)
async def test_http_send(py_clients: MakePy, path: str) -> None:
    topic = "room:" + unique_topic("py-http")  # the colon travels URL-encoded (§1.8)
    receiver = py_clients("receiver")
    await receiver.subscribe("rx", topic)
    rest = py_clients("rest", path=path)
    channel = rest.client.channel(topic)  # http_send needs no subscription

    await channel.http_send("via-http", {"a": {"b": [True, None]}})
    got = await receiver.wait_broadcast("rx", "via-http")
    assert got["payload"] == {"a": {"b": [True, None]}}
    assert got["raw"] == {"event": "via-http", "payload": {"a": {"b": [True, None]}}}


@pytest.mark.compat(64)
async def test_http_send_rejects_bad_bearer(py_clients: MakePy) -> None:
    # Authorization: Bearer wins over the apikey header (§1.8); a bad bearer is 401 Unauthorized.
    rest = py_clients("rest")
    await rest.client.set_auth(make_token(exp_in=-60))
    channel = rest.client.channel(unique_topic("py-http-bad"))
    with pytest.raises(RealtimeHTTPError) as info:
        await channel.http_send("x", {})
    assert info.value.status == 401
    assert info.value.message == "Unauthorized"


@pytest.mark.parametrize("case", sorted(TOKEN_CASES))
@pytest.mark.compat(33, 38)
async def test_join_token_errors(py_clients: MakePy, case: str) -> None:
    make, pattern = TOKEN_CASES[case]
    client = py_clients("bad")
    # The connection key stays valid; the bad token is the join's access_token (§3.2).
    await client.client.set_auth(make())
    status = await client.subscribe("bad", unique_topic("py-token"), expect="CHANNEL_ERROR")
    match = re.fullmatch(pattern, status["reason"] or "")
    assert match, f"unexpected join error {status['error']!r}"
    if case == "expired":
        assert 110 <= int(match.group(1)) <= 140


async def test_valid_user_token_at_join(py_clients: MakePy) -> None:
    topic = unique_topic("py-good-token")
    client = py_clients("user")
    await client.client.set_auth(make_token("authenticated", sub="6d4e0a38-0000-4000-8000-000000000002"))
    await client.subscribe("rx", topic, broadcast={"self": True})
    await client.channels["rx"].send_broadcast("hi", {})
    await client.wait_broadcast("rx", "hi")


@pytest.mark.compat(45)
async def test_set_auth_with_expired_token_closes_channel(py_clients: MakePy) -> None:
    # protocol.md §3.9: the system error is a channel error for the Python client (§9.2) and the
    # following phx_close closes the channel for good.
    client = py_clients("c")
    await client.subscribe("ch", unique_topic("py-refresh"))
    await client.client.set_auth(make_token(exp_in=-30))
    error = await client.log.wait_for(is_status("ch", "CHANNEL_ERROR"), what="the channel error")
    assert re.search(r"Token has expired \d+ seconds ago", error["error"] or ""), error
    await client.log.wait_for(is_status("ch", "CLOSED"), what="CLOSED after phx_close")


@pytest.mark.compat(78)
async def test_presence_track_and_untrack(py_clients: MakePy) -> None:
    topic = unique_topic("py-presence")
    alice = py_clients("alice")
    bob = py_clients("bob")
    await alice.subscribe("a", topic, presence=True, presence_key="alice")
    first = await alice.log.wait_for(is_presence("a", "sync"), what="alice's first sync")
    assert first["state"] == {}
    await bob.subscribe("b", topic, presence=True, presence_key="bob")
    await bob.log.wait_for(is_presence("b", "sync"), what="bob's first sync")

    await alice.channels["a"].track({"user": "alice", "online": True})
    joined = await bob.log.wait_for(is_presence("b", "join", "alice"), what="bob sees alice join")
    assert [_strip(p) for p in joined["presences"]] == [{"user": "alice", "online": True}]
    assert isinstance(joined["presences"][0]["presence_ref"], str)
    # The tracker sees its own join too (§5.2).
    await alice.log.wait_for(is_presence("a", "join", "alice"), what="alice sees herself")
    assert [_strip(p) for p in bob.channels["b"].presence_state()["alice"]] == [{"user": "alice", "online": True}]

    # Re-track with a new payload: one diff joining the new meta and leaving the old one (§5.2).
    await alice.channels["a"].track({"user": "alice", "online": False})

    def updated(_events: list[Any]) -> bool | None:
        metas = bob.channels["b"].presence_state().get("alice", [])
        return True if [_strip(p) for p in metas] == [{"user": "alice", "online": False}] else None

    await bob.log.wait_until(updated, 5, "bob's state to show alice's new meta only")

    since = bob.log.mark()
    await alice.channels["a"].untrack()
    left = await bob.log.wait_for(is_presence("b", "leave", "alice"), what="bob sees alice leave", since=since)
    assert [_strip(p) for p in left["presences"]] == [{"user": "alice", "online": False}]
    assert "alice" not in bob.channels["b"].presence_state()


async def test_presence_state_for_late_joiner(py_clients: MakePy) -> None:
    topic = unique_topic("py-late")
    alice = py_clients("alice")
    await alice.subscribe("a", topic, presence=True, presence_key="alice")
    await alice.channels["a"].track({"user": "alice"})
    await alice.log.wait_for(is_presence("a", "join", "alice"))

    carol = py_clients("carol")
    await carol.subscribe("c", topic, presence=True)  # no key: the server generates one (§5.3)
    sync = await carol.log.wait_for(
        lambda e: is_presence("c", "sync")(e) and "alice" in e["state"], what="carol's state listing alice"
    )
    assert [_strip(p) for p in sync["state"]["alice"]] == [{"user": "alice"}]

    # Disconnecting removes the presence for everyone (§5.1).
    await alice.close()
    await carol.log.wait_for(is_presence("c", "leave", "alice"), what="carol sees alice go")


async def test_unsubscribe_stops_delivery(py_clients: MakePy) -> None:
    topic = unique_topic("py-leave")
    leaver = py_clients("leaver")
    sender = py_clients("sender")
    witness = py_clients("witness")
    await leaver.subscribe("rx", topic)
    await leaver.subscribe("probe", unique_topic("py-probe"), broadcast={"self": True})
    await witness.subscribe("wx", topic)
    await sender.subscribe("tx", topic)

    await sender.channels["tx"].send_broadcast("before", {})
    await leaver.wait_broadcast("rx", "before")

    await leaver.channels["rx"].unsubscribe()
    await leaver.log.wait_for(is_status("rx", "CLOSED"), what="CLOSED after the leave reply")

    await sender.channels["tx"].send_broadcast("after", {})
    await witness.wait_broadcast("wx", "after")
    await leaver.channels["probe"].send_broadcast("probe", {})
    await leaver.wait_broadcast("probe", "probe")
    assert leaver.broadcasts("rx", "after") == []


async def test_burst_of_100_keeps_order(py_clients: MakePy) -> None:
    topic = unique_topic("py-burst")
    sender = py_clients("sender")
    receiver = py_clients("receiver")
    await receiver.subscribe("rx", topic)
    await sender.subscribe("tx", topic)

    for i in range(100):
        await sender.channels["tx"].send_broadcast("seq", {"i": i})
    got = await receiver.log.wait_count(is_broadcast("rx", "seq"), 100, what="100 'seq'")
    assert [e["payload"]["i"] for e in got] == list(range(100))


async def test_private_channel_refused_without_database(py_clients: MakePy) -> None:
    sub = unique_topic("py-private")
    client = py_clients("p")
    status = await client.subscribe("p", sub, private=True, expect="CHANNEL_ERROR")
    assert status["reason"] == f"Unauthorized: You do not have permissions to read from this Channel topic: {sub}"


@pytest.mark.compat(30)
async def test_postgres_bindings_echoed_without_database(py_clients: MakePy) -> None:
    # The client matches the echoed bindings by event/schema/table/filter and takes their ids
    # (§3.4); then the server reports that no database is configured, which the Python client
    # treats as a channel error (§9.2).
    sub = unique_topic("py-pg")
    client = py_clients("pg")
    await client.subscribe(
        "pg",
        sub,
        postgres=[
            {"event": "INSERT", "schema": "public", "table": "messages", "filter": "room_id=eq.7"},
            {"event": "*", "schema": "public", "table": "users", "select": ["id", "name"]},
            {"event": "INSERT", "schema": "public", "table": "messages", "filter": "room_id=eq.7"},
        ],
    )
    ids = [cb.id for cb in client.channels["pg"].postgres_changes_callbacks]
    assert all(isinstance(i, int) and i != 0 for i in ids), ids
    assert ids[0] == ids[2] != ids[1]  # identical bindings get identical ids
    error = await client.log.wait_for(is_status("pg", "CHANNEL_ERROR"), what="the postgres system error")
    assert json.loads(error["error"] or "{}") == {
        "extension": "postgres_changes",
        "status": "error",
        "message": "Unable to subscribe to changes with given parameters. "
        "PostgreSQL is not configured (set REALTIME_DATABASE_URL)",
        "channel": sub,
    }


def _strip(presence: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in presence.items() if k != "presence_ref"}
