"""RedisPubSub under faults, against a real private ``redis-server`` per test.

Two ``RedisPubSub`` instances are two nodes.  The server is SIGKILLed, SIGSTOPped, restarted
on the same port, or has its connections killed, while the nodes publish; what must hold
(pubsub/redis.py module doc): local delivery never stops and stays in publish order, the
state turns ``degraded`` and back to ``connected``, subscriptions come back (including ones
made during the outage), cross-node order holds for messages published after recovery, and
no exception escapes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from faultkit import Node, assert_clean
from redis.asyncio import Redis

from realtime_channels.pubsub import redis as redis_module
from realtime_channels.pubsub.redis import RedisPubSub

TIMEOUT_S = 20.0  # covers the back-off ceiling (5 s) plus a reconnect


def redis_node(name: str, url: str) -> Node:
    return Node(name, lambda on_state: RedisPubSub(url, node_id=name, on_state=on_state), TIMEOUT_S)


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[[str, str], Any]]:
    made: list[Node] = []

    async def make(name: str, url: str) -> Node:
        node = redis_node(name, url)
        await node.pubsub.start(node.deliver)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            await node.pubsub.close()


async def connected_pair(nodes: Callable[[str, str], Any], url: str, stream: str) -> tuple[Node, Node]:
    a: Node = await nodes("a", url)
    b: Node = await nodes("b", url)
    for n in (a, b):
        assert n.pubsub.state == "connected"
        n.pubsub.subscribe(stream)
    # Live both ways before the fault (subscriptions confirmed by Redis).
    a.publish(stream, -1)
    b.publish(stream, -1)
    for n in (a, b):
        await n.wait_until(lambda: n.seq(stream, "a") == [-1] and n.seq(stream, "b") == [-1], "warm-up")
    return a, b


async def publish_until(node: Node, stream: str, stop: asyncio.Event, counter: list[int]) -> None:
    """Publish 0, 1, 2, ... a little at a time until told to stop (pacing, not waiting)."""
    while not stop.is_set():
        node.publish(stream, counter[0])
        counter[0] += 1
        await asyncio.sleep(0.001)


async def test_sigkill_while_publishing_keeps_local_delivery_in_order_and_degrades(
    redis_factory: Any, nodes: Any, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="realtime_channels.pubsub.redis")
    server = redis_factory()
    server.start()
    s = "faults:kill"
    a, b = await connected_pair(nodes, server.url, s)

    stop, counter = asyncio.Event(), [0]
    publisher = asyncio.create_task(publish_until(a, s, stop, counter))
    await b.wait_until(lambda: len(b.seq(s, "a")) >= 101, "cross-node traffic before the kill")
    await asyncio.to_thread(server.kill)  # the loop keeps publishing while the server dies
    await a.wait_state("degraded")
    at_degraded = counter[0]
    await a.wait_until(lambda: counter[0] >= at_degraded + 100, "100 publishes while degraded")
    stop.set()
    await publisher
    sent = counter[0]

    # The publisher's own subscribers got every message exactly once, in order, across the kill.
    await a.wait_until(lambda: len(a.seq(s, "a")) >= sent + 1, "local delivery of everything")
    assert a.seq(s, "a") == [-1, *range(sent)]
    # The other node got an in-order prefix and nothing from the outage (at most once).
    await b.wait_state("degraded")
    got = b.seq(s, "a")
    assert got == [-1, *range(len(got) - 1)] and 100 <= len(got) - 1 < sent
    # b's own publishes during the outage still reach b's local subscribers.
    b.publish(s, 1000)
    await b.wait_until(lambda: b.seq(s, "b")[-1:] == [1000], "b's local delivery while degraded")
    assert a.states == ["connected", "degraded"] and b.states == ["connected", "degraded"]
    degraded_lines = [r.getMessage() for r in caplog.records if "DEGRADED" in r.getMessage()]
    assert len(degraded_lines) == 2  # one line per state change per node
    assert_clean(loop_errors, caplog)


async def test_restart_on_same_port_reconnects_resubscribes_and_resumes_in_order(
    redis_factory: Any, nodes: Any, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="realtime_channels.pubsub.redis")
    server = redis_factory()
    server.start()
    s, late = "faults:restart", "faults:subscribed-during-outage"
    a, b = await connected_pair(nodes, server.url, s)

    await asyncio.to_thread(server.kill)
    for n in (a, b):
        await n.wait_state("degraded")
    b.pubsub.subscribe(late)  # made while Redis is down: must exist after the reconnect
    a.publish(s, 0)  # during the outage: local only
    await a.wait_until(lambda: a.seq(s, "a")[-1:] == [0], "local delivery during the outage")

    await asyncio.to_thread(server.start)  # same port
    for n in (a, b):
        await n.wait_state("connected")

    # Interleaved publishers after recovery: each one's order holds on both nodes.
    for i in range(1, 501):
        a.publish(s, i)
        b.publish(s, i)
    for n in (a, b):
        await n.wait_until(lambda: len(n.seq(s, "a")) >= 501 + (n is a) and len(n.seq(s, "b")) >= 501,
                           "all post-recovery messages")
    assert a.seq(s, "a") == [-1, 0, *range(1, 501)]
    assert b.seq(s, "a") == [-1, *range(1, 501)]  # 0 was published while cut off: not replayed
    for n in (a, b):
        assert n.seq(s, "b") == [-1, *range(1, 501)]
    # The subscription made during the outage was established on reconnect.
    a.publish(late, 7)
    await b.wait_until(lambda: b.seq(late, "a") == [7], "delivery on the stream subscribed while down")
    assert a.states == ["connected", "degraded", "connected"] == b.states
    connected_lines = [r.getMessage() for r in caplog.records if "CONNECTED" in r.getMessage()]
    assert len(connected_lines) == 4  # first connect and reconnect, per node
    assert any("a: CONNECTED" in line and "1 envelope(s)" in line for line in connected_lines)
    assert_clean(loop_errors, caplog)


async def test_killed_connections_reconnect_without_a_server_restart(
    redis_factory: Any, nodes: Any, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory()
    server.start()
    s = "faults:client-kill"
    a, b = await connected_pair(nodes, server.url, s)
    admin = Redis.from_url(server.url)
    try:
        killed = await admin.client_kill_filter(_type="pubsub")
    finally:
        await admin.aclose()
    assert killed == 2  # both nodes' subscribe connections
    for n in (a, b):
        await n.wait_until(lambda: n.states[-2:] == ["degraded", "connected"], "degraded then connected")
    a.publish(s, 1)
    await b.wait_until(lambda: b.seq(s, "a") == [-1, 1], "cross-node delivery after the reconnect")
    assert_clean(loop_errors, caplog)


async def test_a_hung_server_is_detected_by_the_heartbeat(
    redis_factory: Any, nodes: Any, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    # SIGSTOP keeps the TCP connections open but silent: only the PING heartbeat can notice.
    server = redis_factory()
    server.start()
    s = "faults:hung"
    a, b = await connected_pair(nodes, server.url, s)
    server.proc.send_signal(signal.SIGSTOP)
    try:
        await a.wait_state("degraded")
        a.publish(s, 1)
        await a.wait_until(lambda: a.seq(s, "a") == [-1, 1], "local delivery while Redis hangs")
    finally:
        server.proc.send_signal(signal.SIGCONT)
    for n in (a, b):
        await n.wait_state("connected")
    a.publish(s, 2)
    await b.wait_until(lambda: b.seq(s, "a") == [-1, 2], "cross-node delivery after the hang")
    assert_clean(loop_errors, caplog)


async def test_start_while_redis_is_down_runs_degraded_then_connects(
    redis_factory: Any, nodes: Any, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory()  # port chosen, not started yet
    s = "faults:late-start"
    a: Node = await nodes("a", server.url)
    assert a.pubsub.state == "degraded" and a.states == []
    a.pubsub.subscribe(s)
    a.publish(s, 1)
    assert a.seq(s, "a") == [1]  # delivered locally at once while degraded
    await asyncio.to_thread(server.start)
    await a.wait_state("connected")
    b: Node = await nodes("b", server.url)
    b.pubsub.subscribe(s)
    b.publish(s, 0)
    await b.wait_until(lambda: b.seq(s, "b") == [0], "b's subscription is live")
    a.publish(s, 2)
    await b.wait_until(lambda: b.seq(s, "a") == [2], "cross-node delivery")
    await a.wait_until(lambda: a.seq(s, "a") == [1, 2], "a's own message through Redis")
    assert a.states == ["connected"]
    assert_clean(loop_errors, caplog)


async def test_close_during_an_outage_is_clean(
    redis_factory: Any, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory()
    server.start()
    node = redis_node("a", server.url)
    await node.pubsub.start(node.deliver)
    node.pubsub.subscribe("faults:close")
    await asyncio.to_thread(server.kill)
    await node.wait_state("degraded")
    await node.pubsub.close()
    node.publish("faults:close", 1)  # after close: ignored, no error
    assert node.received == []
    assert_clean(loop_errors, caplog)


async def test_outbox_overflow_degrades_instead_of_growing(
    redis_factory: Any, nodes: Any, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = redis_factory()
    server.start()
    s = "faults:overflow"
    a, b = await connected_pair(nodes, server.url, s)
    monkeypatch.setattr(redis_module, "OUTBOX_MAX", 500)
    for i in range(600):  # no await: the writer cannot drain, as if Redis stalled
        a.publish(s, i)
    assert a.pubsub.state == "degraded"
    assert a.seq(s, "a") == [-1, *range(600)]  # every local copy, in order, none twice
    await a.wait_state("connected")
    a.publish(s, 600)
    await b.wait_until(lambda: b.seq(s, "a")[-1:] == [600], "cross-node delivery after recovery")
    assert b.seq(s, "a") == [-1, 600]  # the overflowed remote copies were dropped, not replayed late
    await a.wait_until(lambda: a.seq(s, "a")[-1:] == [600], "a's own message through Redis")
    assert a.seq(s, "a") == [-1, *range(601)]
    assert_clean(loop_errors, caplog)
