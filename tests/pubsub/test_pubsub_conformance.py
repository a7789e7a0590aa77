"""Conformance suite for the ``PubSub`` backbone (pubsub/__init__.py, design.md §2).

Every backend must pass it.  The ``backend_factory`` fixture is parametrized over backends;
the in-process memory backend (several ``MemoryPubSub`` sharing one ``MemoryBroker`` stand in
for several nodes), Redis (one ``RedisPubSub`` per node on a private ``redis-server``) and
Redis Cluster (one ``RedisClusterPubSub`` per node on a private 3-master cluster).

Networked backends deliver later than ``publish`` returns and subscriptions take effect
asynchronously, so the suite never assumes synchronous delivery:

* every wait is "until the condition holds, or fail after a timeout";
* before publishing, each subscribed node is shown to be live with a *probe* envelope it
  publishes to itself and waits to receive;
* "nothing arrives" is checked after a *fence*: an envelope published after the messages under
  test to a node that is still subscribed; once the fence has arrived there, the earlier
  messages have had their chance.

Each test gets its own stream-name prefix, so tests can share one external server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from realtime_channels.protocol.codec import Broadcast
from realtime_channels.pubsub import Envelope, PubSub
from realtime_channels.pubsub.memory import MemoryBroker, MemoryPubSub
from realtime_channels.pubsub.redis import RedisPubSub
from realtime_channels.pubsub.redis_cluster import RedisClusterPubSub

TIMEOUT_S = 10.0
PROBE_ORIGIN = "__conformance_probe__"
_probe_ids = itertools.count()


@dataclass(eq=False)
class NodeHandle:
    """One node's backend plus everything it delivered (probes kept apart)."""

    name: str
    pubsub: PubSub
    received: list[Envelope] = field(default_factory=list)
    probes: set[Any] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    async def close(self) -> None:
        self.closed = True
        await self.pubsub.close()

    def deliver(self, env: Envelope) -> None:
        if env.origin == PROBE_ORIGIN:
            self.probes.add(env.exclude)
        else:
            self.received.append(env)
        self.changed.set()

    def on(self, stream: str) -> list[Envelope]:
        """What arrived on ``stream``, as published (the backbone's offsets left out: they are
        checked by ``positions``)."""
        return [dataclasses.replace(e, offset=None, epoch=None) for e in self.received if e.stream == stream]

    def positions(self, stream: str) -> list[tuple[int | None, str | None]]:
        return [(e.offset, e.epoch) for e in self.received if e.stream == stream]

    async def wait_until(self, cond: Callable[[], bool], what: str) -> None:
        """Wait for ``cond`` without polling: re-check whenever something is delivered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT_S
        while not cond():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: timed out after {TIMEOUT_S}s waiting for {what}")
            self.changed.clear()
            if cond():
                return
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                continue  # the loop reports the timeout with context

    async def wait_count(self, stream: str, count: int) -> None:
        await self.wait_until(lambda: len(self.on(stream)) >= count, f"{count} envelope(s) on {stream}")

    async def subscribe(self, stream: str) -> None:
        """Subscribe and wait until the subscription is live (probe round trip)."""
        self.pubsub.subscribe(stream)
        await self.probe(stream)

    async def probe(self, stream: str) -> None:
        """Publish a probe to ``stream`` from this node and wait until this node receives it."""
        probe_id = f"{self.name}-{next(_probe_ids)}"
        self.pubsub.publish(Envelope(stream, PROBE_ORIGIN, control={}, exclude=probe_id))
        await self.wait_until(lambda: probe_id in self.probes, f"probe {probe_id} on {stream}")


@dataclass
class BackendFactory:
    """Builds started nodes of one backend; all nodes of a test share its stream prefix."""

    backend: str
    new_pubsub: Callable[[], PubSub]
    prefix: str
    nodes: list[NodeHandle] = field(default_factory=list)

    def stream(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def node(self, name: str) -> NodeHandle:
        handle = NodeHandle(name, self.new_pubsub())
        await handle.pubsub.start(handle.deliver)
        self.nodes.append(handle)
        return handle

    async def close_all(self) -> None:
        for handle in self.nodes:
            if not handle.closed:
                await handle.close()


def _memory_backend(request: pytest.FixtureRequest) -> Callable[[], PubSub]:
    broker = MemoryBroker()  # one broker per test: the "network" the nodes share
    return lambda: MemoryPubSub(broker)


def _redis_backend(request: pytest.FixtureRequest) -> Callable[[], PubSub]:
    # Every node is its own RedisPubSub (own connections) on the session's redis-server
    # (tests/pubsub/conftest.py); the per-test stream prefix keeps tests apart.
    url: str = request.getfixturevalue("redis_server").url
    return lambda: RedisPubSub(url)


def _redis_cluster_backend(request: pytest.FixtureRequest) -> Callable[[], PubSub]:
    # One RedisClusterPubSub per node on the session's Redis Cluster; each is given one node's
    # URL and finds the others from it.  The per-test prefix spreads the streams over slots.
    url: str = request.getfixturevalue("redis_cluster").url
    return lambda: RedisClusterPubSub(url)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Callable[[], PubSub]]] = {
    "memory": _memory_backend,
    "redis": _redis_backend,
    "redis_cluster": _redis_cluster_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
async def backend_factory(request: pytest.FixtureRequest) -> AsyncIterator[BackendFactory]:
    name: str = request.param
    factory = BackendFactory(name, BACKENDS[name](request), prefix=f"conformance-{uuid.uuid4().hex}:")
    try:
        yield factory
    finally:
        await factory.close_all()


def text_env(stream: str, origin: str, i: int, **extra: Any) -> Envelope:
    return Envelope(stream, origin, broadcast=Broadcast("realtime:t", payload={"i": i}), **extra)


def seq(envs: list[Envelope], origin: str | None = None) -> list[int]:
    return [
        e.broadcast.payload["i"]
        for e in envs
        if e.broadcast is not None and (origin is None or e.origin == origin)
    ]


# --- ordering -------------------------------------------------------------------------------


async def test_per_stream_publish_order_across_1000_messages(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("order")
    a, b, c = [await backend_factory.node(n) for n in ("a", "b", "c")]
    for n in (a, b, c):
        await n.subscribe(stream)
    for i in range(1000):
        a.pubsub.publish(text_env(stream, "a", i))
    for n in (a, b, c):
        await n.wait_count(stream, 1000)
        assert seq(n.on(stream)) == list(range(1000))


async def test_order_holds_per_publisher_when_publishers_interleave(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("interleave")
    a, b, c = [await backend_factory.node(n) for n in ("a", "b", "c")]
    for n in (a, b, c):
        await n.subscribe(stream)
    for i in range(300):
        a.pubsub.publish(text_env(stream, "a", i))
        b.pubsub.publish(text_env(stream, "b", i))
    for n in (a, b, c):
        await n.wait_count(stream, 600)
        assert seq(n.on(stream), "a") == list(range(300))
        assert seq(n.on(stream), "b") == list(range(300))
        assert len(n.on(stream)) == 600


# --- delivery -------------------------------------------------------------------------------


async def test_every_subscribed_node_receives_including_publisher(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("all")
    a, b, c = [await backend_factory.node(n) for n in ("a", "b", "c")]
    outsider = await backend_factory.node("outsider")
    for n in (a, b, c):
        await n.subscribe(stream)
    # ``exclude`` has the shape the node uses, (connection id, topic); the origin node compares
    # it with hub subscriber ids, so it must come back as an equal tuple (not e.g. a list).
    sent = text_env(stream, "a", 1, exclude=(7, "realtime:t"))
    a.pubsub.publish(sent)
    for n in (a, b, c):
        await n.wait_count(stream, 1)
        assert n.on(stream) == [sent]  # exactly once, unchanged (exclude travels too)
    # A node that never subscribed gets nothing (fence: c has seen a later envelope).
    fence = text_env(stream, "a", 2)
    a.pubsub.publish(fence)
    await c.wait_until(lambda: len(c.on(stream)) >= 2, "fence")
    assert outsider.received == []


async def test_publisher_need_not_be_subscribed(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("remote-only")
    a = await backend_factory.node("a")
    b = await backend_factory.node("b")
    await b.subscribe(stream)
    a.pubsub.publish(text_env(stream, "a", 1))
    await b.wait_until(lambda: len(b.on(stream)) >= 1, "the envelope")
    assert seq(b.on(stream)) == [1]
    # Fence for a: a later probe published by b reaches b, and a saw none of it.
    await b.probe(stream)
    assert a.received == []


async def test_envelopes_arrive_unchanged(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("fidelity")
    a, b = await backend_factory.node("a"), await backend_factory.node("b")
    await b.subscribe(stream)
    sent = [
        Envelope(stream, "a", broadcast=Broadcast("realtime:t", payload={"type": "broadcast", "event": "e", "payload": {"ü": [1, 2.5, None, True]}})),
        Envelope(stream, "a", broadcast=Broadcast("realtime:t", event="cursor", data=b'{"x":1}'), exclude=(1, "realtime:t")),
        Envelope(stream, "a", broadcast=Broadcast("realtime:t", event="blob", data=b"\x00\xff\x80", binary=True)),
        Envelope(stream, "a", broadcast=Broadcast("realtime:t", event="db", data=b'{"id":"r1"}', meta={"id": "r1"})),
        Envelope(
            stream,
            "a",
            control={"joins": {"k": {"metas": [{"phx_ref": "F1", "u": "alice"}]}}, "leaves": {}},
        ),
    ]
    for env in sent:
        a.pubsub.publish(env)
    await b.wait_until(lambda: len(b.on(stream)) >= len(sent), "all envelopes")
    assert b.on(stream) == sent


async def test_publish_to_stream_without_subscribers_is_harmless(backend_factory: BackendFactory) -> None:
    a = await backend_factory.node("a")
    a.pubsub.publish(text_env(backend_factory.stream("nobody"), "a", 1))
    stream = backend_factory.stream("somebody")
    await a.subscribe(stream)
    a.pubsub.publish(text_env(stream, "a", 2))
    await a.wait_until(lambda: len(a.received) >= 1, "the envelope")
    assert a.on(stream) == [text_env(stream, "a", 2)] and len(a.received) == 1


async def test_publish_subscribe_unsubscribe_are_plain_calls(backend_factory: BackendFactory) -> None:
    # The node calls these synchronously on the hot path ("publish never blocks").
    pubsub = (await backend_factory.node("a")).pubsub
    for method in (pubsub.publish, pubsub.subscribe, pubsub.unsubscribe):
        assert not inspect.iscoroutinefunction(method), method
    assert inspect.iscoroutinefunction(pubsub.start) and inspect.iscoroutinefunction(pubsub.close)


# --- unsubscribe, idempotence ---------------------------------------------------------------


async def test_no_delivery_after_unsubscribe(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("unsub")
    a, b = await backend_factory.node("a"), await backend_factory.node("b")
    for n in (a, b):
        await n.subscribe(stream)
    a.pubsub.publish(text_env(stream, "a", 1))
    await b.wait_until(lambda: len(b.on(stream)) >= 1, "first envelope")
    b.pubsub.unsubscribe(stream)
    for i in range(2, 12):
        a.pubsub.publish(text_env(stream, "a", i))
    await a.wait_until(lambda: len(a.on(stream)) >= 11, "all envelopes at the publisher (fence)")
    assert seq(a.on(stream)) == list(range(1, 12))
    assert seq(b.on(stream)) == [1]


async def test_subscribe_is_idempotent(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("idem-sub")
    a, b = await backend_factory.node("a"), await backend_factory.node("b")
    b.pubsub.subscribe(stream)
    await b.subscribe(stream)
    await a.subscribe(stream)
    for i in range(5):
        a.pubsub.publish(text_env(stream, "a", i))
    await b.wait_until(lambda: len(b.on(stream)) >= 5, "5 envelopes")
    await a.wait_until(lambda: len(a.on(stream)) >= 5, "5 envelopes")
    await b.probe(stream)  # fence: anything duplicated would have arrived before it
    assert seq(b.on(stream)) == list(range(5))  # at most once, despite subscribing twice
    # Subscription is not reference-counted: one unsubscribe ends it.
    b.pubsub.unsubscribe(stream)
    a.pubsub.publish(text_env(stream, "a", 5))
    await a.wait_until(lambda: len(a.on(stream)) >= 6, "fence")
    assert seq(b.on(stream)) == list(range(5))


async def test_unsubscribe_is_idempotent(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("idem-unsub")
    a, b = await backend_factory.node("a"), await backend_factory.node("b")
    b.pubsub.unsubscribe(backend_factory.stream("never-subscribed"))
    await a.subscribe(stream)
    await b.subscribe(stream)
    b.pubsub.unsubscribe(stream)
    b.pubsub.unsubscribe(stream)
    a.pubsub.publish(text_env(stream, "a", 1))
    await a.wait_until(lambda: len(a.on(stream)) >= 1, "fence")
    assert b.received == []
    # Subscribing again after the double unsubscribe works normally.
    await b.subscribe(stream)
    a.pubsub.publish(text_env(stream, "a", 2))
    await b.wait_until(lambda: len(b.on(stream)) >= 1, "envelope after resubscribe")
    assert seq(b.on(stream)) == [2]


async def test_unsubscribing_one_node_leaves_others_subscribed(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("partial")
    a, b, c = [await backend_factory.node(n) for n in ("a", "b", "c")]
    for n in (b, c):
        await n.subscribe(stream)
    b.pubsub.unsubscribe(stream)
    a.pubsub.publish(text_env(stream, "a", 1))
    await c.wait_until(lambda: len(c.on(stream)) >= 1, "envelope")
    assert seq(c.on(stream)) == [1] and b.received == []


# --- isolation ------------------------------------------------------------------------------


async def test_streams_are_isolated(backend_factory: BackendFactory) -> None:
    s1, s2 = backend_factory.stream("pub:room1"), backend_factory.stream("priv:room1")
    a, b, c = [await backend_factory.node(n) for n in ("a", "b", "c")]
    await a.subscribe(s1)
    await b.subscribe(s2)
    await c.subscribe(s1)
    await c.subscribe(s2)
    for i in range(20):
        c.pubsub.publish(text_env(s1 if i % 2 == 0 else s2, "c", i))
    await c.wait_until(lambda: len(c.received) >= 20, "fence: all 20 at the node on both streams")
    await a.wait_until(lambda: len(a.received) >= 10, "s1 envelopes")
    await b.wait_until(lambda: len(b.received) >= 10, "s2 envelopes")
    await a.probe(s1)
    await b.probe(s2)
    assert {e.stream for e in a.received} == {s1} and seq(a.received) == list(range(0, 20, 2))
    assert {e.stream for e in b.received} == {s2} and seq(b.received) == list(range(1, 20, 2))


async def test_stream_names_are_not_prefixes_of_each_other(backend_factory: BackendFactory) -> None:
    short, long = backend_factory.stream("room"), backend_factory.stream("room:1")
    a, b = await backend_factory.node("a"), await backend_factory.node("b")
    await a.subscribe(short)
    await b.subscribe(long)
    a.pubsub.publish(text_env(long, "a", 1))
    b.pubsub.publish(text_env(short, "b", 2))
    await a.wait_until(lambda: len(a.received) >= 1, "short-stream envelope")
    await b.wait_until(lambda: len(b.received) >= 1, "long-stream envelope")
    await a.probe(short)
    await b.probe(long)
    assert a.on(short) == [text_env(short, "b", 2)] and len(a.received) == 1
    assert b.on(long) == [text_env(long, "a", 1)] and len(b.received) == 1


# --- close ----------------------------------------------------------------------------------


async def test_close_stops_delivery(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("close")
    a, b = await backend_factory.node("a"), await backend_factory.node("b")
    for n in (a, b):
        await n.subscribe(stream)
    a.pubsub.publish(text_env(stream, "a", 1))
    await b.wait_until(lambda: len(b.on(stream)) >= 1, "first envelope")
    await b.close()
    for i in range(2, 7):
        a.pubsub.publish(text_env(stream, "a", i))
    await a.wait_until(lambda: len(a.on(stream)) >= 6, "fence at the publisher")
    assert seq(b.on(stream)) == [1]
    assert seq(a.on(stream)) == list(range(1, 7))


async def test_closed_node_does_not_affect_remaining_nodes(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("close-others")
    a, b, c = [await backend_factory.node(n) for n in ("a", "b", "c")]
    for n in (a, b, c):
        await n.subscribe(stream)
    await a.close()
    b.pubsub.publish(text_env(stream, "b", 1))
    for n in (b, c):
        await n.wait_count(stream, 1)
        assert seq(n.on(stream)) == [1]
    assert a.received == []


async def test_broadcasts_get_one_dense_numbering_seen_alike_by_every_node(backend_factory: BackendFactory) -> None:
    stream = backend_factory.stream("offsets")
    a, b = await backend_factory.node("a"), await backend_factory.node("b")
    await a.subscribe(stream)
    await b.subscribe(stream)
    for i in range(3):
        a.pubsub.publish(text_env(stream, "a", i))
        b.pubsub.publish(text_env(stream, "b", 10 + i))
    await a.wait_count(stream, 6)
    await b.wait_count(stream, 6)
    assert [o for o, _ in a.positions(stream)] == [1, 2, 3, 4, 5, 6]
    assert a.positions(stream) == b.positions(stream) and len({e for _, e in a.positions(stream)}) == 1
    a.pubsub.publish(Envelope(stream, "a", control={"x": 1}))
    await a.wait_count(stream, 7)
    assert a.positions(stream)[-1] == (None, None)  # control envelopes are not numbered
    epoch = a.positions(stream)[0][1]
    assert epoch is not None
    history, gap = await b.pubsub.history(stream, epoch, 4)
    assert (history.epoch, gap) == (epoch, None)
    last_two = [e.broadcast.payload for e in a.on(stream)[4:6] if e.broadcast is not None]
    assert [(o, x.payload) for o, x in history.entries] == list(zip([5, 6], last_two, strict=True))
