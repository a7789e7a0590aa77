"""RedisClusterPubSub under a master failover, on a private Redis Cluster (3 masters, 3
replicas; tests/rediscluster.py) per test.

Two ``RedisClusterPubSub`` instances are two nodes.  The master owning a stream's slot is
SIGKILLed while both nodes publish; what must hold (pubsub/redis_cluster.py module doc): the
nodes turn ``degraded`` and back to ``connected`` once the replica is promoted, the stream is
subscribed on the new master, streams of the other shards keep crossing nodes meanwhile, each
node's own envelopes keep reaching it (every one exactly once, in order), nothing is delivered
twice, envelopes published after the recovery reach both nodes, and no exception escapes.
A slot migrated to another master under traffic (the old master's ``sunsubscribe`` push and
MOVED replies, or ASK while it is MIGRATING) and a manual failover (the old master stays up as
a replica) move the stream to the new owner's link: no duplicate, no reordering, and every own
envelope delivered exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import support
from rediscluster import RedisCluster

from realtime_channels.protocol.codec import Broadcast
from realtime_channels.pubsub import Envelope
from realtime_channels.pubsub.redis_cluster import RedisClusterPubSub, shard_channel, stream_slot

TIMEOUT_S = 30.0  # covers the cluster's failure detection and election (node timeout 1 s)
PREFIX = "rc:"


class Node:
    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.states: list[str] = []
        self.received: list[Envelope] = []
        self.changed = asyncio.Event()
        self.pubsub = RedisClusterPubSub(url, prefix=PREFIX, node_id=name, on_state=self._on_state)

    def _on_state(self, state: str) -> None:
        self.states.append(state)
        self.changed.set()

    def deliver(self, env: Envelope) -> None:
        self.received.append(env)
        self.changed.set()

    def seq(self, stream: str, origin: str) -> list[int]:
        return [e.broadcast.payload["i"] for e in self.received
                if e.stream == stream and e.origin == origin and e.broadcast is not None]

    def publish(self, stream: str, i: int) -> None:
        self.pubsub.publish(Envelope(stream, self.name, broadcast=Broadcast("realtime:t", payload={"i": i})))

    async def wait_until(self, cond: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: timed out waiting for {what} (states={self.states})")
            self.changed.clear()
            if cond():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    c = RedisCluster()
    c.start()
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


def stream_on_other_master(cluster: RedisCluster, master: int) -> str:
    for i in range(1000):
        candidate = f"pub:elsewhere-{i}"
        if cluster.master_of(shard_channel(PREFIX, candidate)) != master:
            return candidate
    raise AssertionError("every stream hashed to one master")


async def test_master_failover_degrades_then_resubscribes_on_the_promoted_replica(
        cluster: RedisCluster, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="realtime_channels")
    stream = "pub:failover"
    dead = cluster.master_of(shard_channel(PREFIX, stream))
    other = stream_on_other_master(cluster, dead)
    a, b = Node("a", cluster.url), Node("b", cluster.url)
    try:
        for n in (a, b):
            await n.pubsub.start(n.deliver)
            assert n.pubsub.state == "connected"
            assert len(n.pubsub.links) == 3
            n.pubsub.subscribe(stream)
            n.pubsub.subscribe(other)
        for n in (a, b):
            confirmed = n.pubsub.confirmed(stream)
            if confirmed is not None:
                await confirmed
        a.publish(stream, -1)
        b.publish(stream, -1)
        for n in (a, b):
            await n.wait_until(lambda: n.seq(stream, "a") == [-1] and n.seq(stream, "b") == [-1], "warm-up")

        # both nodes publish on the failing stream every 10 ms for the whole test
        sent: dict[str, list[int]] = {"a": [], "b": []}
        stop = asyncio.Event()

        async def traffic(node: Node) -> None:
            i = 0
            while not stop.is_set():
                node.publish(stream, i)
                sent[node.name].append(i)
                i += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.01)

        pumps = [asyncio.create_task(traffic(n)) for n in (a, b)]
        try:
            await b.wait_until(lambda: len(b.seq(stream, "a")) > 5, "traffic from a to cross before the fault")
            killed_at = time.monotonic()
            cluster.kill(dead)
            for n in (a, b):
                await n.wait_until(lambda: n.pubsub.state == "degraded", "degraded after the master died")
            # the other shards still carry envelopes between the nodes
            a.publish(other, 1)
            await b.wait_until(lambda: b.seq(other, "a") == [1], "a stream of a live shard to cross nodes")
            # local delivery goes on: what a publishes now reaches a
            mark = len(sent["a"])
            await a.wait_until(lambda: len(a.seq(stream, "a")) > mark + 5, "local delivery while degraded")
            for n in (a, b):
                await n.wait_until(lambda: n.pubsub.state == "connected", "connected after the failover")
            recovered_at = time.monotonic()
            assert dead not in {port for _, port in a.pubsub.links}
            # what is published once both are connected again reaches both nodes
            resumed = {name: len(sent[name]) for name in sent}
            for n in (a, b):
                for origin in ("a", "b"):
                    await n.wait_until(lambda: len([i for i in n.seq(stream, origin) if i >= resumed[origin]]) >= 20,
                                       f"{origin}'s envelopes after the recovery on {n.name}")
        finally:
            stop.set()
            await asyncio.gather(*pumps)
        print(f"failover: degraded to connected in {recovered_at - killed_at:.2f} s after SIGKILL")
        # a barrier: one more envelope from each node, after everything above
        for n in (a, b):
            n.publish(stream, 10**6)
        for n in (a, b):
            await n.wait_until(lambda: n.seq(stream, "a")[-1:] == [10**6] and n.seq(stream, "b")[-1:] == [10**6],
                               "the barrier")
        for n in (a, b):
            for origin in ("a", "b"):
                got = n.seq(stream, origin)
                assert len(got) == len(set(got)), f"{n.name} got an envelope of {origin} twice"
                assert got == sorted(got), f"{n.name}: {origin}'s envelopes out of order"
                # everything published after the recovery arrived
                assert set(range(resumed[origin], len(sent[origin]))) <= set(got)
            # own envelopes: every one, exactly once, through the outage
            assert n.seq(stream, n.name) == [-1, *sent[n.name], 10**6]
            assert n.states[-2:] == ["degraded", "connected"]
    finally:
        for n in (a, b):
            await n.pubsub.close()
    gc.collect()
    assert loop_errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("DEGRADED" in m for m in messages) and any("CONNECTED" in m for m in messages)


@pytest.mark.parametrize("pause", [False, True], ids=["at-once", "asking-meanwhile"])
async def test_slot_migration_moves_the_stream_to_the_new_master(
        cluster: RedisCluster, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture,
        pause: bool) -> None:
    """``asking-meanwhile``: the slot stays MIGRATING, its keys moved, until both nodes have had
    publishes redirected (ASK/TRYAGAIN) and are holding them; then the migration completes."""
    caplog.set_level(logging.INFO, logger="realtime_channels")
    stream = "pub:migrating"
    source = cluster.master_of(shard_channel(PREFIX, stream))
    target = min(cluster.masters() - {source})
    a, b = Node("a", cluster.url), Node("b", cluster.url)
    try:
        for n in (a, b):
            await n.pubsub.start(n.deliver)
            n.pubsub.subscribe(stream)
        for n in (a, b):
            confirmed = n.pubsub.confirmed(stream)
            if confirmed is not None:
                await confirmed
        sent: dict[str, list[int]] = {"a": [], "b": []}
        stop = asyncio.Event()

        async def traffic(node: Node) -> None:
            i = 0
            while not stop.is_set():
                node.publish(stream, i)
                sent[node.name].append(i)
                i += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.01)

        pumps = [asyncio.create_task(traffic(n)) for n in (a, b)]
        try:
            await b.wait_until(lambda: len(b.seq(stream, "a")) > 5, "traffic before the migration")
            slot = stream_slot(PREFIX, stream)
            if pause:
                await asyncio.to_thread(cluster.begin_migration, slot, target)
                for n in (a, b):  # no delivery tells of it: polled
                    await support.wait_until(lambda: any(link.holding for link in n.pubsub.links.values()),
                                             TIMEOUT_S, f"{n.name}'s publishes redirected and held")
                await asyncio.to_thread(cluster.finish_migration, slot, target)
            else:
                await asyncio.to_thread(cluster.move_slot, slot, target)
            for n in (a, b):
                await n.wait_until(lambda: n.pubsub.shard_of(stream) == ("127.0.0.1", target)
                                   and n.pubsub.state == "connected", "the stream on the new master's link")
            resumed = {name: len(sent[name]) for name in sent}
            for n in (a, b):
                for origin in ("a", "b"):
                    await n.wait_until(lambda: len([i for i in n.seq(stream, origin) if i >= resumed[origin]]) >= 20,
                                       f"{origin}'s envelopes after the migration on {n.name}")
        finally:
            stop.set()
            await asyncio.gather(*pumps)
        for n in (a, b):
            n.publish(stream, 10**6)
        for n in (a, b):
            await n.wait_until(lambda: n.seq(stream, "a")[-1:] == [10**6] and n.seq(stream, "b")[-1:] == [10**6],
                               "the barrier")
        for n in (a, b):
            for origin in ("a", "b"):
                got = n.seq(stream, origin)
                assert len(got) == len(set(got)), f"{n.name} got an envelope of {origin} twice"
                assert got == sorted(got), f"{n.name}: {origin}'s envelopes out of order"
                assert set(range(resumed[origin], len(sent[origin]))) <= set(got)
            # redirected publishes were sent again on the new master: none lost, none twice
            assert n.seq(stream, n.name) == [*sent[n.name], 10**6]
            assert n.states == ["connected"], "a slot migration is no outage"
            # the retention log moved with the slot: offsets go on from where they were
            offsets = [e.offset for e in n.received if e.stream == stream and e.epoch and not e.epoch.startswith("L")]
            assert offsets == sorted(offsets) and len(offsets) == len(set(offsets))
    finally:
        for n in (a, b):
            await n.pubsub.close()
    gc.collect()
    assert loop_errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    print("\n".join(r.getMessage() for r in caplog.records if "cluster" in r.getMessage())[-3000:])


async def test_manual_failover_moves_the_stream_off_the_demoted_master(
        cluster: RedisCluster, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    """CLUSTER FAILOVER: the old master stays up as a replica (its link is still connected when
    the map changes); what was queued there goes to the new master, nothing twice."""
    caplog.set_level(logging.INFO, logger="realtime_channels")
    stream = "pub:handover"
    old = cluster.master_of(shard_channel(PREFIX, stream))
    a, b = Node("a", cluster.url), Node("b", cluster.url)
    try:
        for n in (a, b):
            await n.pubsub.start(n.deliver)
            n.pubsub.subscribe(stream)
        for n in (a, b):
            confirmed = n.pubsub.confirmed(stream)
            if confirmed is not None:
                await confirmed
        sent: dict[str, list[int]] = {"a": [], "b": []}
        stop = asyncio.Event()

        async def traffic(node: Node) -> None:
            i = 0
            while not stop.is_set():
                node.publish(stream, i)
                sent[node.name].append(i)
                i += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.01)

        pumps = [asyncio.create_task(traffic(n)) for n in (a, b)]
        try:
            await b.wait_until(lambda: len(b.seq(stream, "a")) > 5, "traffic before the failover")
            new = await asyncio.to_thread(cluster.manual_failover, old)
            for n in (a, b):
                await n.wait_until(lambda: n.pubsub.shard_of(stream) == ("127.0.0.1", new)
                                   and n.pubsub.state == "connected", "the stream on the new master's link")
            resumed = {name: len(sent[name]) for name in sent}
            for n in (a, b):
                for origin in ("a", "b"):
                    await n.wait_until(lambda: len([i for i in n.seq(stream, origin) if i >= resumed[origin]]) >= 20,
                                       f"{origin}'s envelopes after the failover on {n.name}")
        finally:
            stop.set()
            await asyncio.gather(*pumps)
        for n in (a, b):
            n.publish(stream, 10**6)
        for n in (a, b):
            await n.wait_until(lambda: n.seq(stream, "a")[-1:] == [10**6] and n.seq(stream, "b")[-1:] == [10**6],
                               "the barrier")
        for n in (a, b):
            for origin in ("a", "b"):
                got = n.seq(stream, origin)
                assert len(got) == len(set(got)), f"{n.name} got an envelope of {origin} twice"
                assert got == sorted(got), f"{n.name}: {origin}'s envelopes out of order"
                assert set(range(resumed[origin], len(sent[origin]))) <= set(got)
            assert n.seq(stream, n.name) == [*sent[n.name], 10**6]
    finally:
        for n in (a, b):
            await n.pubsub.close()
    gc.collect()
    assert loop_errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    print("\n".join(r.getMessage() for r in caplog.records if "cluster" in r.getMessage())[-3000:])
