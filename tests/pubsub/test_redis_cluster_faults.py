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
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import support
from faultkit import Node, assert_clean
from rediscluster import RedisCluster, running_cluster

from realtime_channels.pubsub.redis_cluster import RedisClusterPubSub, shard_channel, stream_slot

TIMEOUT_S = 30.0  # covers the cluster's failure detection and election (node timeout 1 s)
PREFIX = "rc:"


def cluster_node(name: str, url: str) -> Node:
    return Node(name, lambda on_state: RedisClusterPubSub(url, prefix=PREFIX, node_id=name, on_state=on_state),
                TIMEOUT_S)


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    with running_cluster() as cluster:
        yield cluster


async def start_subscribed(nodes: tuple[Node, ...], stream: str, *more: str) -> None:
    """Start every node, subscribe it, and wait until the cluster confirmed ``stream``."""
    for n in nodes:
        await n.pubsub.start(n.deliver)
        for name in (stream, *more):
            n.pubsub.subscribe(name)
    for n in nodes:
        confirmed = n.pubsub.confirmed(stream)
        if confirmed is not None:
            await confirmed


async def on_master(nodes: tuple[Node, ...], stream: str, port: int) -> None:
    """Until every node serves ``stream`` on the link of the master at ``port``, connected."""
    for n in nodes:
        await n.wait_until(lambda: n.pubsub.shard_of(stream) == ("127.0.0.1", port)
                           and n.pubsub.state == "connected", "the stream on the new master's link")


class Traffic:
    """Every node publishes 0, 1, 2, … on ``stream`` every 10 ms (pacing, not waiting) while
    the block runs; ``sent`` is what each published."""

    def __init__(self, nodes: tuple[Node, ...], stream: str) -> None:
        self.nodes, self.stream = nodes, stream
        self.sent: dict[str, list[int]] = {n.name: [] for n in nodes}
        self._stop = asyncio.Event()
        self._pumps: list[asyncio.Task[None]] = []

    async def _pump(self, node: Node) -> None:
        i = 0
        while not self._stop.is_set():
            node.publish(self.stream, i)
            self.sent[node.name].append(i)
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.01)

    async def __aenter__(self) -> Traffic:
        self._pumps = [asyncio.create_task(self._pump(n)) for n in self.nodes]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._pumps)

    def mark(self) -> dict[str, int]:
        """How many each node has published so far."""
        return {name: len(sent) for name, sent in self.sent.items()}

    async def wait_delivered_after(self, mark: dict[str, int], what: str) -> None:
        """Until every node has 20 envelopes of every node published after ``mark``."""
        for n in self.nodes:
            for origin in mark:
                await n.wait_until(lambda: len([i for i in n.seq(self.stream, origin) if i >= mark[origin]]) >= 20,
                                   f"{origin}'s envelopes after {what} on {n.name}")

    async def check(self, mark: dict[str, int], before: tuple[int, ...] = ()) -> None:
        """After a barrier (one more envelope from each node): nothing twice, publish order
        kept, everything published after ``mark`` delivered everywhere, and each node's own
        envelopes all delivered to it exactly once (``before``: its own sent ahead of these)."""
        stream, last = self.stream, 10**6
        for n in self.nodes:
            n.publish(stream, last)
        for n in self.nodes:
            await n.wait_until(lambda: all(n.seq(stream, o)[-1:] == [last] for o in self.sent), "the barrier")
        for n in self.nodes:
            for origin in self.sent:
                got = n.seq(stream, origin)
                assert len(got) == len(set(got)), f"{n.name} got an envelope of {origin} twice"
                assert got == sorted(got), f"{n.name}: {origin}'s envelopes out of order"
                assert set(range(mark[origin], len(self.sent[origin]))) <= set(got)
            assert n.seq(stream, n.name) == [*before, *self.sent[n.name], last]


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
    a, b = nodes = cluster_node("a", cluster.url), cluster_node("b", cluster.url)
    try:
        await start_subscribed(nodes, stream, other)
        for n in nodes:
            assert n.pubsub.state == "connected"
            assert len(n.pubsub.links) == 3
        a.publish(stream, -1)
        b.publish(stream, -1)
        for n in nodes:
            await n.wait_until(lambda: n.seq(stream, "a") == [-1] and n.seq(stream, "b") == [-1], "warm-up")

        # both nodes publish on the failing stream every 10 ms for the whole test
        async with Traffic(nodes, stream) as traffic:
            await b.wait_until(lambda: len(b.seq(stream, "a")) > 5, "traffic from a to cross before the fault")
            killed_at = time.monotonic()
            cluster.kill(dead)
            for n in nodes:
                await n.wait_until(lambda: n.pubsub.state == "degraded", "degraded after the master died")
            # the other shards still carry envelopes between the nodes
            a.publish(other, 1)
            await b.wait_until(lambda: b.seq(other, "a") == [1], "a stream of a live shard to cross nodes")
            # local delivery goes on: what a publishes now reaches a
            mark = len(traffic.sent["a"])
            await a.wait_until(lambda: len(a.seq(stream, "a")) > mark + 5, "local delivery while degraded")
            for n in nodes:
                await n.wait_until(lambda: n.pubsub.state == "connected", "connected after the failover")
            recovered_at = time.monotonic()
            assert dead not in {port for _, port in a.pubsub.links}
            # what is published once both are connected again reaches both nodes
            resumed = traffic.mark()
            await traffic.wait_delivered_after(resumed, "the recovery")
        print(f"failover: degraded to connected in {recovered_at - killed_at:.2f} s after SIGKILL")
        # own envelopes: every one, exactly once, through the outage
        await traffic.check(resumed, before=(-1,))
        for n in nodes:
            assert n.states[-2:] == ["degraded", "connected"]
    finally:
        for n in nodes:
            await n.pubsub.close()
    assert_clean(loop_errors, caplog)
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
    a, b = nodes = cluster_node("a", cluster.url), cluster_node("b", cluster.url)
    try:
        await start_subscribed(nodes, stream)
        async with Traffic(nodes, stream) as traffic:
            await b.wait_until(lambda: len(b.seq(stream, "a")) > 5, "traffic before the migration")
            slot = stream_slot(PREFIX, stream)
            if pause:
                await asyncio.to_thread(cluster.begin_migration, slot, target)
                for n in nodes:  # no delivery tells of it: polled
                    await support.wait_until(lambda: any(link.holding for link in n.pubsub.links.values()),
                                             TIMEOUT_S, f"{n.name}'s publishes redirected and held")
                await asyncio.to_thread(cluster.finish_migration, slot, target)
            else:
                await asyncio.to_thread(cluster.move_slot, slot, target)
            await on_master(nodes, stream, target)
            resumed = traffic.mark()
            await traffic.wait_delivered_after(resumed, "the migration")
        # redirected publishes were sent again on the new master: none lost, none twice
        await traffic.check(resumed)
        for n in nodes:
            assert n.states == ["connected"], "a slot migration is no outage"
            # the retention log moved with the slot: offsets go on from where they were
            offsets = [e.offset for e in n.received if e.stream == stream and e.epoch and not e.epoch.startswith("L")]
            assert offsets == sorted(offsets) and len(offsets) == len(set(offsets))
    finally:
        for n in nodes:
            await n.pubsub.close()
    assert_clean(loop_errors, caplog)
    print("\n".join(r.getMessage() for r in caplog.records if "cluster" in r.getMessage())[-3000:])


async def test_manual_failover_moves_the_stream_off_the_demoted_master(
        cluster: RedisCluster, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    """CLUSTER FAILOVER: the old master stays up as a replica (its link is still connected when
    the map changes); what was queued there goes to the new master, nothing twice."""
    caplog.set_level(logging.INFO, logger="realtime_channels")
    stream = "pub:handover"
    old = cluster.master_of(shard_channel(PREFIX, stream))
    a, b = nodes = cluster_node("a", cluster.url), cluster_node("b", cluster.url)
    try:
        await start_subscribed(nodes, stream)
        async with Traffic(nodes, stream) as traffic:
            await b.wait_until(lambda: len(b.seq(stream, "a")) > 5, "traffic before the failover")
            new = await asyncio.to_thread(cluster.manual_failover, old)
            await on_master(nodes, stream, new)
            resumed = traffic.mark()
            await traffic.wait_delivered_after(resumed, "the failover")
        await traffic.check(resumed)
    finally:
        for n in nodes:
            await n.pubsub.close()
    assert_clean(loop_errors, caplog)
    print("\n".join(r.getMessage() for r in caplog.records if "cluster" in r.getMessage())[-3000:])
