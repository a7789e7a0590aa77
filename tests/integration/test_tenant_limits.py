"""Every tenant limit of protocol.md §8 tripped once, with its exact reply (§1.4, §1.8, §3.5, §4.5,
§5.7; checklist 37, 58, 82).  No database is needed.

Tests of tenant-wide rates start their own server with an explicit low limit
(``server_factory``); per-socket and per-channel limits share one module server.  The shared
test servers raise every limit.  Rates are rolling averages over 5-second buckets, so "how many events
trip it" depends on where the bucket boundary falls: the tests push until the limit answers
(bounded), and never assume a count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from support import ServerProc, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from rawclient import (
    V2,
    VSNS,
    Frame,
    RawClient,
    event_is,
    open_client,
    refused_handshake,
    reply_to,
    sub_topic,
    unique_topic,
    user_broadcast,
)
from yarl import URL

OK: dict[str, Any] = {"status": "ok", "response": {}}
#: per-socket and per-channel limits keep no tenant-wide state, so one server serves those tests
STATIC_LIMITS = {
    "REALTIME_MAX_CHANNELS_PER_CLIENT": "1",
    "REALTIME_MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW": "2",
    "REALTIME_MAX_PAYLOAD_SIZE_IN_KB": "1",  # 1 × 1000 + 500 bytes
}
#: upper bound on pushes needed to trip a limit of 1/s (5 per bucket, 2 buckets at worst)
MAX_TRIES = 40


@pytest.fixture(scope="module")
def static_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = start_server(str(tmp_path_factory.mktemp("static-limits")), **STATIC_LIMITS)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def private_only_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = start_server(str(tmp_path_factory.mktemp("private-only")), REALTIME_PRIVATE_ONLY="true")
    yield srv
    srv.stop()


def join_error(reason: str) -> dict[str, Any]:
    return {"status": "error", "response": {"reason": reason}}


def shutdown_notice(topic: str, message: str) -> dict[str, Any]:
    return {"extension": "system", "status": "error", "message": message, "channel": sub_topic(topic)}


async def expect_shutdown(c: RawClient, topic: str, jr: str, message: str, trigger_ref: str,
                          system: Frame | None = None) -> None:
    """§8 "shut down": system error then phx_close, and no reply to the triggering push.
    ``system`` is the notice when the caller has already taken it from the socket."""
    if system is None:
        system = await c.expect(event_is("system", topic))
    assert system.value == c.wire(jr, None, topic, "system", shutdown_notice(topic, message))
    close = await c.expect(event_is("phx_close", topic))
    assert close.value == c.wire(jr, jr, topic, "phx_close", {})
    assert c.position(close) == c.position(system) + 1
    await c.assert_nothing_pending(reply_to(trigger_ref))  # and the socket stays open


def answer_or_notice(ref: str, topic: str) -> Callable[[Frame], bool]:
    """The push's reply, or the shutdown notice that replaces it."""
    is_reply = reply_to(ref, topic)
    return lambda f: is_reply(f) or f.event == "system"


@dataclass(frozen=True, slots=True)
class Resp:
    status: int
    headers: Mapping[str, str]
    body: Any


async def post(server: ServerProc, path: str, body: Any) -> Resp:
    headers = {"apikey": server.anon_key, "Authorization": f"Bearer {server.anon_key}",
               "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(URL(server.http_url + path, encoded=True), data=json.dumps(body).encode(),
                                headers=headers) as r:
            raw = await r.read()
            return Resp(r.status, dict(r.headers), json.loads(raw) if raw else None)


def single(topic: str, event: str = "ev") -> str:
    return f"/api/broadcast/{quote(sub_topic(topic), safe='')}/events/{event}"


def batch(topic: str, n: int, event: str = "ev") -> dict[str, Any]:
    return {"messages": [{"topic": sub_topic(topic), "event": event, "payload": {"i": i}} for i in range(n)]}


def assert_rate_headers(resp: Resp, limit: int, *, exhausted: bool) -> None:
    rolling = int(resp.headers["x-rate-rolling"])
    assert resp.headers["x-rate-limit"] == str(limit)
    assert resp.headers["x-rate-limit-remaining"] == str(max(0, limit - rolling))
    if exhausted:
        assert rolling >= limit and resp.headers["x-rate-limit-remaining"] == "0"


# --- concurrent users (§1.4, §3.5, §8) ----------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
async def test_concurrent_users_limit_refuses_joins_then_upgrades(server_factory: Any, vsn: str) -> None:
    srv = server_factory(REALTIME_MAX_CONCURRENT_USERS="1")
    topic = unique_topic()
    async with open_client(srv, vsn) as a, open_client(srv, vsn) as b:  # sockets count once they join
        await a.join_ok(topic, {})
        await a.join_ok(unique_topic(), {})  # a socket already counted is never refused
        reply = await b.join(topic, {}, ref="1", join_ref="1")
        assert reply.value == b.wire("1", "1", topic, "phx_reply",
                                     join_error("ConnectionRateLimitReached: Too many connected users"))
        refusal = await refused_handshake(srv, vsn)
        assert (refusal.status, refusal.content_type, refusal.json()) == (
            429, "application/json", {"error": "Too many connected users"})
        await a.close()
        # The user count drops when a's socket is gone: b may join (waiting for the server to notice).
        for attempt in range(MAX_TRIES):
            reply = await b.join(topic, {}, ref=f"r{attempt}", join_ref=f"r{attempt}")
            if reply.payload["status"] == "ok":
                break
            await b.heartbeat()  # a round trip: gives the server time to process a's close
        assert reply.payload == {"status": "ok", "response": {"postgres_changes": []}}


# --- joins per second (§3.5, §8) ------------------------------------------------------------------


async def test_join_rate_limit_refuses_the_join_closes_1001_and_refuses_upgrades(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_JOINS_PER_SECOND="1")
    for _round in range(5):  # a bucket boundary may lower the rate between two steps: try again
        async with open_client(srv, V2) as c:
            for i in range(MAX_TRIES):
                topic = unique_topic()
                reply = await c.join(topic, {}, ref=str(i), join_ref=str(i))
                if reply.payload["status"] == "error":
                    break
            assert reply.value == c.wire(str(i), str(i), topic, "phx_reply",
                                         join_error("ClientJoinRateLimitReached: Too many joins per second"))
            assert await c.wait_closed(5) == 1001
        try:
            ws = await connect(f"{srv.ws_url}/socket/websocket?apikey={srv.anon_key}&vsn=2.0.0", open_timeout=5)
        except InvalidStatus as exc:
            assert exc.response.status_code == 429
            assert json.loads(exc.response.body) == {"error": "Too many joins per second"}
            return
        await ws.close()
    raise AssertionError("the join rate never refused an upgrade")


# --- channels per connection (item 37) ----------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
async def test_channels_per_client_limit(static_server: ServerProc, vsn: str) -> None:
    srv = static_server
    first, second = unique_topic(), unique_topic()
    async with open_client(srv, vsn) as c:
        await c.join_ok(first, {})
        reply = await c.join(second, {}, ref="9", join_ref="9")
        assert reply.value == c.wire("9", "9", second, "phx_reply", join_error("ChannelRateLimitReached: Too many channels"))
        await c.assert_nothing_pending(event_is("phx_close"))
        await c.push(first, "phx_leave", {})
        await c.expect(event_is("phx_close", first))
        await c.join_ok(second, {})  # leaving frees the slot


# --- events per second (§1.8, §8) ----------------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
async def test_events_rate_shuts_the_sending_channel_down_and_rest_gets_429(server_factory: Any, vsn: str) -> None:
    srv = server_factory(REALTIME_MAX_EVENTS_PER_SECOND="1")
    topic = unique_topic()
    async with open_client(srv, vsn) as c:
        jr = await c.join_ok(topic, {"broadcast": {"ack": True}})
        for i in range(MAX_TRIES):
            ref = await c.broadcast(topic, "tick", {"i": i})
            frame = await c.expect(answer_or_notice(ref, topic))
            if frame.event == "system":
                break
            assert frame.payload == OK
        await expect_shutdown(c, topic, jr, "Too many messages per second", ref, frame)

    # REST while the limit is triggered (§1.8): both endpoints, with the x-rate-* headers.
    exceeded = {"message": "You have exceeded your rate limit"}
    for _round in range(10):
        for _ in range(MAX_TRIES):
            resp = await post(srv, single(topic), {"x": 1})
            if resp.status == 429:
                break
            assert resp.status == 202
        assert resp.body == exceeded
        assert_rate_headers(resp, 1, exhausted=True)
        resp = await post(srv, "/api/broadcast", batch(topic, 1))
        if resp.body == exceeded:  # else a bucket boundary lowered the rate in between: again
            assert resp.status == 429
            assert_rate_headers(resp, 1, exhausted=True)
            return
    raise AssertionError("the batch endpoint never reported the exceeded rate")


async def test_batch_larger_than_the_remaining_rate_is_refused(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_EVENTS_PER_SECOND="10")
    topic = unique_topic()
    async with open_client(srv, V2) as c:
        await c.join_ok(topic, {})
        resp = await post(srv, "/api/broadcast", batch(topic, 11))
        assert (resp.status, resp.body) == (429, {"message": "Too many messages to broadcast, please reduce the batch size"})
        assert_rate_headers(resp, 10, exhausted=False)
        resp = await post(srv, "/api/broadcast", batch(topic, 10, "after"))
        assert resp.status == 202
        # Nothing of the refused batch came before the accepted one (REST delivery is ordered).
        frames = [await c.assert_nothing_before(user_broadcast("after", topic), event_is("broadcast"))
                  for _ in range(10)]
        assert [f.payload["payload"]["i"] for f in frames] == list(range(10))


# --- presence (§5.7; item 82) ---------------------------------------------------------------------


async def track(c: RawClient, topic: str, payload: Any) -> tuple[str, Frame]:
    ref = await c.push(topic, "presence", {"type": "presence", "event": "track", "payload": payload})
    frame = await c.expect(answer_or_notice(ref, topic))
    return ref, frame


@pytest.mark.parametrize("vsn", VSNS)
async def test_client_presence_window_from_settings(static_server: ServerProc, vsn: str) -> None:
    srv = static_server
    topic = unique_topic()
    async with open_client(srv, vsn) as c:
        jr = await c.join_ok(topic, {"presence": {"key": "k"}})
        for i in range(2):
            _, frame = await track(c, topic, {"i": i})
            assert frame.payload == OK
        ref, frame = await track(c, topic, {"i": 2})
        assert frame.event == "system"
        await expect_shutdown(c, topic, jr, "Client presence rate limit exceeded", ref, frame)


@pytest.mark.parametrize("vsn", VSNS)
async def test_tenant_presence_rate(server_factory: Any, vsn: str) -> None:
    srv = server_factory(REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND="1",
                         REALTIME_MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW="1000")
    topic = unique_topic()
    async with open_client(srv, vsn) as c:
        jr = await c.join_ok(topic, {"presence": {"key": "k", "enabled": True}})
        for i in range(MAX_TRIES):
            ref, frame = await track(c, topic, {"i": i})
            if frame.event == "system":
                break
            assert frame.payload == OK
        await expect_shutdown(c, topic, jr, "Too many presence messages per second", ref, frame)


# --- payload size (§4.5; item 58) -----------------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
async def test_payload_size_limit_from_settings(static_server: ServerProc, vsn: str) -> None:
    srv = static_server
    topic = unique_topic()
    big = {"x": "y" * 1600}
    async with open_client(srv, vsn) as sender, open_client(srv, vsn) as receiver:
        jr = await sender.join_ok(topic, {"broadcast": {"ack": True}, "presence": {"key": "k"}})
        await receiver.join_ok(topic, {})
        ref = await sender.broadcast(topic, "big", big)
        assert (await sender.expect(reply_to(ref, topic))).value == sender.wire(
            jr, ref, topic, "phx_reply", {"status": "error", "response": "payload_size_exceeded"})
        ref = await sender.broadcast(topic, "small", {"x": "y" * 1000})
        assert (await sender.expect(reply_to(ref, topic))).payload == OK
        assert (await receiver.expect(event_is("broadcast", topic))).payload["event"] == "small"

        resp = await post(srv, single(topic), big)
        assert (resp.status, resp.body) == (422, {"errors": {"payload": ["Payload size exceeds tenant limit"]}})
        resp = await post(srv, "/api/broadcast", {"messages": [
            {"topic": sub_topic(topic), "event": "ok", "payload": {}},
            {"topic": sub_topic(topic), "event": "big", "payload": big}]})
        assert (resp.status, resp.body) == (422, {"errors": {"messages": [
            {}, {"payload": ["Payload size exceeds tenant limit"]}]}})

        ref = await sender.push(topic, "presence", {"type": "presence", "event": "track", "payload": big})
        await expect_shutdown(sender, topic, jr, "Track message size exceeded", ref)
        # Neither REST call sent anything: a later REST message comes first.
        assert (await post(srv, single(topic, "marker"), {})).status == 202
        await receiver.assert_nothing_before(user_broadcast("marker", topic), event_is("broadcast"))


# --- private only (§3.5) -------------------------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
async def test_private_only_refuses_public_joins(private_only_server: ServerProc, vsn: str) -> None:
    srv = private_only_server
    topic = unique_topic()
    async with open_client(srv, vsn) as c:
        reply = await c.join(topic, {"private": False}, ref="1", join_ref="1")
        assert reply.value == c.wire("1", "1", topic, "phx_reply",
                                     join_error("PrivateOnly: This project only allows private channels"))
        reply = await c.join(topic, {}, ref="2", join_ref="2")  # private defaults to false
        assert reply.payload == join_error("PrivateOnly: This project only allows private channels")
        # A private join passes this check; without a database no policy can grant read.
        reply = await c.join(topic, {"private": True}, ref="3", join_ref="3")
        assert reply.payload == join_error(
            f"Unauthorized: You do not have permissions to read from this Channel topic: {sub_topic(topic)}")
        await c.assert_nothing_pending(event_is("phx_close"))
