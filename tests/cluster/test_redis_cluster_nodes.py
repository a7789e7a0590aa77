"""Two server processes on a Redis Cluster (``REALTIME_REDIS_CLUSTER=1``; 3 masters and 3
replicas from tests/rediscluster.py): broadcasts cross nodes through sharded pub/sub, and
presence is rebuilt after the master of the presence-replication shard is SIGKILLed and its
replica takes over (``/health`` degraded, then ok; a member tracked on A before the fault and
one tracked during it are both listed on B afterwards).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from clusterkit import assert_no_traceback, health, wait_async, wait_nodes_sync, wait_until
from rawclient import V1, V2, Frame, RawClient, event_is, open_client, reply_to, unique_topic
from rediscluster import RedisCluster, running_cluster
from support import ServerProc, start_server

from realtime_channels.node import CONTROL_STREAM
from realtime_channels.pubsub.redis_cluster import shard_channel

#: failure detection (node timeout 1 s), election, the nodes' next slot-map read and resync
RECOVER_S = 30.0
PRESENCE_S = 10.0


def with_key(key: str) -> dict[str, Any]:
    return {"presence": {"enabled": True, "key": key}}


def is_broadcast(f: Frame) -> bool:
    return bool(f.event == "broadcast")


async def track(c: RawClient, topic: str) -> None:
    ref = await c.push(topic, "presence", {"type": "presence", "event": "track", "payload": {}})
    await c.expect(reply_to(ref, topic))


async def members_on(node: ServerProc, topic: str) -> list[str]:
    """The presence keys a client joining ``topic`` on ``node`` is told of."""
    async with open_client(node, V1) as c:
        await c.join_ok(topic, {"presence": {"enabled": True}})
        return sorted((await c.expect(event_is("presence_state", topic))).payload)


async def broadcast_crosses(sender: RawClient, receiver: RawClient, topic: str, n: int) -> None:
    await sender.push(topic, "broadcast", {"type": "broadcast", "event": "e", "payload": {"n": n}})
    frame = await receiver.expect(is_broadcast, timeout=10)
    assert frame.broadcast_view()["payload"] == {"n": n}


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    with running_cluster() as cluster:
        yield cluster


async def test_broadcast_and_presence_across_a_master_failover(redis_cluster: RedisCluster, tmp_path: Any) -> None:
    env = {"REALTIME_REDIS_URL": redis_cluster.url, "REALTIME_REDIS_CLUSTER": "1"}
    nodes: list[ServerProc] = []
    try:
        for _ in range(2):
            nodes.append(start_server(str(tmp_path), **env))
        a, b = nodes
        wait_nodes_sync(nodes, 2)
        topic = unique_topic("x-rcluster")
        async with open_client(a, V2) as sender, open_client(b, V1) as receiver, open_client(a, V1) as member:
            await receiver.join_ok(topic)
            await sender.join_ok(topic)
            await broadcast_crosses(sender, receiver, topic, 1)
            await member.join_ok(topic, with_key("before"))
            await track(member, topic)
            await wait_async(lambda: _listed(b, topic, ["before"]), PRESENCE_S, "B to list A's member")

            dead = redis_cluster.kill_master_of(shard_channel("rc:", CONTROL_STREAM))
            killed_at = time.monotonic()
            await wait_until(lambda: all(health(n)["pubsub"] == "degraded" for n in nodes), 10,
                             "both nodes to report the backbone degraded")
            async with open_client(a, V2) as during:
                await during.join_ok(topic, with_key("during"))
                await track(during, topic)  # local to A until the shard is back
                await wait_until(lambda: all(health(n)["status"] == "ok" for n in nodes), RECOVER_S,
                                 "both nodes to report ok after the failover")
                ok_after = time.monotonic() - killed_at
                await wait_async(lambda: _listed(b, topic, ["before", "during"]), PRESENCE_S,
                                 "B to list A's members after the failover")
                print(f"failover: /health ok {ok_after:.2f} s after SIGKILL of master {dead}; presence "
                      f"rebuilt on B {time.monotonic() - killed_at:.2f} s after")
                await broadcast_crosses(sender, receiver, topic, 2)
        for node in nodes:
            assert node.proc.poll() is None
            assert_no_traceback(node)
        log = a.log()
        assert "redis cluster pubsub" in log and "slot map of 3 master(s)" in log  # the sharded backbone
        assert "DEGRADED" in log and "CONNECTED" in log
    finally:
        for node in nodes:
            node.stop()


async def _listed(node: ServerProc, topic: str, keys: list[str]) -> bool | None:
    return await members_on(node, topic) == keys or None
