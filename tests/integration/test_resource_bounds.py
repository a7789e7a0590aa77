"""What a hostile or careless client can make the server hold, end to end (protocol.md §2.2–2.4,
§3.5, §3.9, §8; error-codes.md).

- An idle socket is reaped after ``REALTIME_IDLE_TIMEOUT_MS``; its channels leave with it.
- A socket that vanishes (TCP FIN or RST without a close frame, mid-frame, right after input the
  server refuses) leaves no subscription behind.
- A join flood is answered with Supabase's exact errors, then the socket is closed; other
  clients' round trips go on and the server's memory stays put.
- Token refreshes cannot grow the verified-token cache past its bound.

Dead subscriptions are invisible on the wire (nobody reads them), so they are made visible
through the tenant's events/s limit, which counts every per-channel delivery (§8): with
``REALTIME_MAX_EVENTS_PER_SECOND`` = ``RATE``, a rolling average over 5-second buckets, at least
``5 × RATE`` events always pass (the average is taken over at least one bucket), while a
sending channel whose messages also count deliveries to dead subscribers is shut down with
``Too many messages per second`` long before its quota (over at most two buckets, ``10 × RATE``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import jwt
import pytest
from rawclient import V1, V2, Frame, RawClient, event_is, open_client, reply_to, user_broadcast, unique_topic
from support import ServerProc, make_token, wait_async, wait_until

log = logging.getLogger(__name__)

OK_REPLY = {"status": "ok", "response": {}}
RATE = 20
#: acked broadcasts that fit in ``5 × RATE`` events when each costs 2 (the send, one delivery)
QUOTA = 5 * RATE // 2
MiB = 1024 * 1024


def deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


class Departures:
    """The presence keys that left, as ``c`` reads them from its diffs (several may share one
    diff: REALTIME_PRESENCE_COALESCE_MS)."""

    def __init__(self, c: RawClient, topic: str) -> None:
        self.c, self.topic, self.left = c, topic, set[str]()

    async def wait(self, key: str, timeout: float) -> None:
        while key not in self.left:
            frame = await self.c.expect(lambda f: f.event == "presence_diff" and f.topic == self.topic
                                        and bool(f.payload["leaves"]), timeout=timeout)
            self.left |= set(frame.payload["leaves"])


async def track(c: RawClient, topic: str, payload: Any) -> None:
    ref = await c.push(topic, "presence", {"type": "presence", "event": "track", "payload": payload})
    assert (await c.expect(reply_to(ref, topic))).payload == OK_REPLY


@asynccontextmanager
async def heartbeating(*clients: RawClient, every: float = 0.2) -> AsyncIterator[None]:
    """Keep ``clients`` talking (a heartbeat round trip each, every ``every`` s), as real clients do."""
    async def beat() -> None:
        while True:
            for c in clients:
                await c.barrier()
            await asyncio.sleep(every)  # the clients' own heartbeat pacing

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def send_quota(sender: RawClient, topic: str, receivers: list[RawClient], n: int, self_: bool = False) -> None:
    """``n`` acked broadcasts: each acked (no rate shutdown), each received by every receiver, in order."""
    for i in range(n):
        ref = await sender.broadcast(topic, "q", {"i": i})
        frame = await sender.expect(lambda f, ref=ref: reply_to(ref, topic)(f) or f.event == "system")
        assert frame.payload == OK_REPLY, f"broadcast {i} of {n} refused: {frame.value}"
    for r in receivers + ([sender] if self_ else []):
        got = [(await r.expect(user_broadcast("q", topic))).payload["payload"]["i"] for _ in range(n)]
        assert got == list(range(n))


def connections(srv: ServerProc, n: int) -> Callable[[], bool]:
    return lambda: srv.metrics()["realtime_connections"] == n


# --- idle sockets (§2.2) -----------------------------------------------------------------------


async def test_idle_sockets_are_reaped_and_their_channels_leave(server_factory: Any) -> None:
    """Ten sockets join a room, track presence and fall silent; two others heartbeat.  The silent
    ones are closed (1000 ``idle timeout``) no sooner than the timeout after their last frame,
    their presence leaves, and none of their subscriptions is delivered to any more."""
    srv = server_factory(REALTIME_IDLE_TIMEOUT_MS="1000", REALTIME_MAX_EVENTS_PER_SECOND=str(RATE))
    room, idle_count = unique_topic("idle"), 10
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(open_client(srv, V2))
        keeper = await stack.enter_async_context(open_client(srv, V1))
        await watcher.join_ok(room, {"presence": {"enabled": True}, "broadcast": {"ack": True}})
        await keeper.join_ok(room, {})
        idle = [await stack.enter_async_context(open_client(srv, V2 if i % 2 else V1)) for i in range(idle_count)]
        async with heartbeating(watcher, keeper):
            last_sent = []
            for i, c in enumerate(idle):
                await c.join_ok(room, {"presence": {"key": f"idle-{i}"}})
                last_sent.append(loop.time())
                await track(c, room, {"i": i})
            departures = Departures(watcher, room)
            for i, c in enumerate(idle):  # silent from here on: reaped with 1000 "idle timeout"
                assert await c.wait_closed(5) == 1000
                assert c.ws.close_reason == "idle timeout"
                # not sooner than the timeout; the server runs on uvloop, whose clock is read
                # once per loop iteration (in whole milliseconds), so it may stamp a frame's
                # arrival a little before the client's own clock saw it sent
                assert loop.time() - last_sent[i] >= 1.0 - 0.05
                await departures.wait(f"idle-{i}", timeout=5)
            await wait_until(connections(srv, 2), 5, "the reaped sockets to be gone")
            # the heartbeating sockets stayed, and no broadcast is delivered to a reaped channel
            await send_quota(watcher, room, [keeper], QUOTA)
        async with open_client(srv, V2) as late:
            await late.join_ok(room, {"presence": {"enabled": True}})
            assert (await late.expect(event_is("presence_state", room))).payload == {}


# --- vanished sockets ------------------------------------------------------------------------


def reset(c: RawClient) -> None:
    """Cut the TCP connection with a RST: no close frame, no FIN."""
    transport = c.ws.transport
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def masked_header(length: int) -> bytes:
    """The start of a client text frame announcing ``length`` bytes (RFC 6455 §5.2)."""
    return bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big") + os.urandom(4)


async def fin(c: RawClient, room: str) -> None:
    c.ws.transport.abort()  # FIN, no close frame


async def rst(c: RawClient, room: str) -> None:
    reset(c)


async def after_deep_push(c: RawClient, room: str) -> None:
    ref = await c.broadcast(room, "deep", deep(300))
    refused = await c.expect(reply_to(ref))
    assert refused.payload == {"status": "error", "response": {"reason": "payload nested more than 128 levels deep"}}
    reset(c)


async def after_oversized_frame(c: RawClient, room: str) -> None:
    await c.send_text("x" * 70_000)  # over REALTIME_MAX_FRAME_BYTES: the server closes (1009)
    reset(c)


async def mid_frame(c: RawClient, room: str) -> None:
    c.ws.transport.write(masked_header(1000) + b"partial")
    reset(c)


async def after_unmasked_frame(c: RawClient, room: str) -> None:
    c.ws.transport.write(b"\x81\x05hello")  # a protocol error: clients must mask
    c.ws.transport.abort()


async def mid_join(c: RawClient, room: str) -> None:
    await c.send_msg(unique_topic("never-answered"), "phx_join", {"config": {}}, "j", "j")
    reset(c)


OTHER_QUOTA = 30
#: the ways a socket vanishes: no close frame in any of them
VANISH: list[Callable[[RawClient, str], Coroutine[Any, Any, None]]] = [
    fin, rst, after_deep_push, after_oversized_frame, mid_frame, after_unmasked_frame, mid_join]


async def test_vanished_sockets_leave_no_subscription(server_factory: Any) -> None:
    """21 sockets join a room, track presence and vanish, three in each way of ``VANISH``.  Then
    the room's sender gets its whole quota through (``QUOTA`` messages × 2 events; 21 dead
    subscribers would make that × 23), a sender in an unrelated room and its receiver get all of
    their ``OTHER_QUOTA`` messages (× 3 events: the send, its own copy, the receiver's), and
    ``/metrics`` shows the four living sockets and exactly those events counted."""
    rate = 2 * RATE  # 5 × rate = 200 ≥ QUOTA × 2 + OTHER_QUOTA × 3 = 190
    srv = server_factory(REALTIME_MAX_EVENTS_PER_SECOND=str(rate), REALTIME_MAX_FRAME_BYTES="65536")
    room, other, per_kind = unique_topic("vanish"), unique_topic("unrelated"), 3
    async with AsyncExitStack() as stack:
        sender, receiver, sender_b, receiver_b = [await stack.enter_async_context(open_client(srv, vsn))
                                                  for vsn in (V2, V1, V1, V2)]
        await sender.join_ok(room, {"broadcast": {"ack": True}})
        await receiver.join_ok(room, {})
        await sender_b.join_ok(other, {"broadcast": {"ack": True, "self": True}})
        await receiver_b.join_ok(other, {})
        keys = []
        for n, vanish in enumerate(VANISH * per_kind):
            c = await stack.enter_async_context(open_client(srv, V2 if n % 2 else V1))
            await c.join_ok(room, {"presence": {"key": f"dead-{n}"}})
            await track(c, room, {"how": vanish.__name__})
            await vanish(c, room)
            keys.append(f"dead-{n}")
        departures = Departures(receiver, room)
        for key in keys:  # each one's presence left the room ...
            await departures.wait(key, timeout=5)
        # ... and the server holds the four living sockets only
        await wait_until(connections(srv, 4), 5, "the vanished sockets to be gone")

        await send_quota(sender, room, [receiver], QUOTA)
        await send_quota(sender_b, other, [receiver_b], OTHER_QUOTA, self_=True)
        # every event counted was a delivery to a living channel: 2 per message in the room, 3 in the other
        counted = srv.metrics()["realtime_events_per_second"]
        spans = [round(counted * 5 * buckets) for buckets in (1, 2, 3)]
        assert 2 * QUOTA + 3 * OTHER_QUOTA in spans, f"events counted {spans} (one per bucket count 1-3)"
        for c in (sender, receiver, sender_b, receiver_b):
            await c.barrier()
    assert "Traceback" not in srv.log()


# --- join floods (§3.5, §8) --------------------------------------------------------------------

CHANNELS = 100  # Supabase's default
LONG = "flood-" + "x" * 1500
#: what the server may grow by while refusing a flood (allocator noise); keeping only the topic of
#: each refused join would take 7 MB at the higher join rate (~4,900 refused joins × 1.5 KB)
FLOOD_RSS_BOUND = 4 * MiB


def join_error(reason: str) -> dict[str, Any]:
    return {"status": "error", "response": {"reason": reason}}


@pytest.mark.parametrize("join_rate", [100, 1000])  # Supabase's default, and one that lets thousands through
async def test_join_flood_is_refused_exactly_and_others_keep_their_round_trips(server_factory: Any,
                                                                              join_rate: int) -> None:
    """One socket sends 12 × the join rate of joins without waiting for replies (topics of 1.5 KB,
    so anything kept per refused join would show in RSS)."""
    srv = server_factory(REALTIME_MAX_JOINS_PER_SECOND=str(join_rate),
                         REALTIME_MAX_CHANNELS_PER_CLIENT=str(CHANNELS))
    flood_size = 12 * join_rate
    room = unique_topic("bystanders")
    loop = asyncio.get_running_loop()
    async with open_client(srv, V2) as a, open_client(srv, V1) as b:
        await a.join_ok(room, {})
        await b.join_ok(room, {})  # two joins counted before the flood
        rss_before = srv.rss_bytes()
        async with open_client(srv, V2) as flooder:
            async def flood() -> None:
                for i in range(flood_size):
                    await flooder.send_msg(f"realtime:{LONG}-{i}", "phx_join", {"config": {}}, str(i), str(i))
                    if i % 50 == 0:
                        await asyncio.sleep(0)  # let this process read the bystanders' replies too

            sending = asyncio.create_task(flood())
            round_trips: list[float] = []
            deadline = loop.time() + 20
            while not flooder.is_closed:  # the bystanders' heartbeats go on during the flood
                assert loop.time() < deadline, "the flooder was never closed"
                start = loop.time()
                await a.barrier()
                await b.barrier()
                round_trips.append(loop.time() - start)
            assert flooder.ws.close_code == 1001 and flooder.ws.close_reason == "too many joins"
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)  # stopped by the close, or cancelled
        replies = flooder.received
        refused_at = len(replies) - 1
        # 100 channels, then "too many channels" until the join rate (every join counts; a rolling
        # average over at least one 5-second bucket) is exceeded: that join is refused with the
        # join-rate error, then the socket is closed and nothing more of the flood is answered
        assert 5 * join_rate - 2 <= refused_at < flood_size, refused_at
        for i, frame in enumerate(replies):
            if i < CHANNELS:
                payload: dict[str, Any] = {"status": "ok", "response": {"postgres_changes": []}}
            elif i < refused_at:
                payload = join_error("ChannelRateLimitReached: Too many channels")
            else:
                payload = join_error("ClientJoinRateLimitReached: Too many joins per second")
            assert frame.value == [str(i), str(i), f"realtime:{LONG}-{i}", "phx_reply", payload], (i, frame.value)
        await wait_until(connections(srv, 2), 5, "the flooder to be gone")
        await a.broadcast(room, "after", {"n": 1})  # the room still works
        assert (await b.expect(user_broadcast("after", room))).payload["payload"] == {"n": 1}
        rss_after = srv.rss_bytes()
    log.info("join flood: %d joins answered (%d refused as too many channels), %d bystander round trips "
             "(slowest %.1f ms), RSS %.1f -> %.1f MiB", len(replies), refused_at - CHANNELS, len(round_trips),
             1000 * max(round_trips, default=0.0), rss_before / MiB, rss_after / MiB)
    assert round_trips, "no bystander round trip completed during the flood"
    assert rss_after - rss_before < FLOOD_RSS_BOUND, (rss_before, rss_after)


# --- token refreshes (§3.9, §7.1) ---------------------------------------------------------------

CAP = 16_384  # MAX_TOKEN_CHARS: longer tokens are refused before they are decoded or remembered
SPELLINGS = 3000
DISTINCT = 3000
#: the verified-token cache's bound in bytes (auth/claims.py), fixed here so the test holds it to it
CACHE_BYTES = 16 * MiB
#: RSS the spellings may add (one cache entry, buffers); a cache keyed by spelling would add 16 MiB
SPELLED_RSS_BOUND = 4 * MiB
#: RSS beyond the cache's byte bound that the distinct keys may add (allocator slack, buffers)
SLACK = 16 * MiB


def sized_token(length: int, **claims: Any) -> str:
    """A valid anon key of exactly ``length`` characters (padded with a ``pad`` claim)."""
    pad = length * 3 // 4
    for _ in range(8):
        token = make_token("anon", pad="p" * pad, **claims)
        if len(token) == length:
            return token
        pad += (length - len(token)) * 3 // 4 or (1 if len(token) < length else -1)
    raise AssertionError(f"could not size a token to {length} characters")


def distinct_tokens(length: int, count: int) -> list[str]:
    """``count`` different valid anon keys of ``length`` characters each."""
    first = sized_token(length, n="00000")
    pad = "p" * len(jwt.decode(first, options={"verify_signature": False})["pad"])
    return [first] + [make_token("anon", pad=pad, n=f"{n:05d}") for n in range(1, count)]


def spelling(token: str, n: int) -> str:
    """The ``n``-th distinct spelling of ``token`` that normalises to it: surrounding whitespace,
    one character percent-encoded, or percent-encoded spaces (protocol.md §7.1 step 1)."""
    kind, m = n % 3, n // 3
    if kind == 0:
        return " " * (m % 300) + token + "\n" * (m // 300 + 1)
    if kind == 1:
        return token[:m] + urllib.parse.quote(token[m], safe="").replace(token[m], f"%{ord(token[m]):02X}") + token[m + 1:]
    return "%20" * (m % 200) + token + "\t" * (m // 200 + 1)


async def refresh(c: RawClient, topic: str, token: str) -> None:
    await c.push(topic, "access_token", {"access_token": token})


async def test_token_refreshes_cannot_grow_the_token_cache(server_factory: Any) -> None:
    """Refreshes with 3,000 spellings of one near-cap anon key (15,684 characters), then 3,000
    distinct valid keys of 16,284 characters.  A cache keyed by spelling and unbounded would
    keep each token (~15.7-16.3 KB of text) and its claims (~11.7-12.2 KB of padding): about
    3,000 × 27.5 KB + 3,000 × 28.5 KB ≈ 168 MB.  Spellings share one entry (RSS stays within a
    few MiB), and the entries are bounded by bytes (16 MiB), so the distinct keys may add that
    plus slack only (measured without the bound: +86 MiB)."""
    srv = server_factory()
    room = unique_topic("tokens")
    big = sized_token(CAP - 700)
    spellings = [spelling(big, n) for n in range(SPELLINGS)]
    assert len(set(spellings)) == SPELLINGS and max(map(len, spellings)) <= CAP
    distinct = distinct_tokens(CAP - 100, DISTINCT)
    assert len(set(distinct)) == DISTINCT and {len(t) for t in distinct} == {CAP - 100}
    async with open_client(srv, V2) as c:
        jr = await c.join_ok(room, {"broadcast": {"ack": True}}, access_token=big)
        for token in spellings[:30]:  # warm up the refresh path before the baseline
            await refresh(c, room, token)
        await c.barrier()
        rss_before = srv.rss_bytes()
        for token in spellings[30:]:
            await refresh(c, room, token)
        assert not [f for f in await c.barrier() if f.event in ("system", "phx_close")]
        rss_spelled = srv.rss_bytes()
        for token in distinct:
            await refresh(c, room, token)
        assert not [f for f in await c.barrier() if f.event in ("system", "phx_close")]
        rss_after = srv.rss_bytes()
        # the socket and the channel stayed; the key still works, spelled any way
        await refresh(c, room, spelling(big, 7))
        ref = await c.broadcast(room, "still", {"ok": True})
        assert (await c.expect(reply_to(ref, room))).value == [jr, ref, room, "phx_reply", OK_REPLY]
        second = unique_topic("tokens-again")
        await c.join_ok(second, {}, access_token=spelling(big, 2999))
        # one character over the cap is refused before anything else; the socket stays
        await refresh(c, second, " " * (CAP + 1 - len(big)) + big)
        notice = await c.expect(event_is("system", second))
        assert notice.payload["message"] == "The token provided is larger than 16384 characters"
        await c.expect(event_is("phx_close", second))
        await c.barrier()
    log.info("token refreshes: RSS %.1f MiB, %.1f after %d spellings, %.1f after %d distinct near-cap keys",
             rss_before / MiB, rss_spelled / MiB, SPELLINGS, rss_after / MiB, DISTINCT)
    # spellings share one entry: nothing like the 16 MiB a cache keyed by spelling would fill
    assert rss_spelled - rss_before < SPELLED_RSS_BOUND, (rss_before, rss_spelled)
    assert rss_after - rss_before < CACHE_BYTES + SLACK, (rss_before, rss_after)
