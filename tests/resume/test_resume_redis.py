"""Offsets and retention in Redis (pubsub/redis_log.py): one numbering for a stream whichever
node publishes, and a resume on another node with the gap counted from the Redis log."""

from __future__ import annotations

from typing import Any

import pytest
from rawclient import V2, open_client, system_msg, unique_topic
from test_resume_raw import is_broadcast, meta_of, send_n

pytestmark = pytest.mark.asyncio


async def test_two_nodes_share_one_numbering_and_the_log_counts_the_gap(make_cluster: Any) -> None:
    cluster = make_cluster(2, REALTIME_RESUME_MAX_MESSAGES="5")
    a, b = cluster.nodes
    topic = unique_topic()
    async with open_client(a, V2) as watcher:
        await watcher.join_ok(topic, {"broadcast": {"resume": True}})
        await send_n(a, topic, 0, 2)
        await send_n(b, topic, 2, 2)
        got = [await watcher.expect(is_broadcast) for _ in range(4)]
        assert [meta_of(f)["offset"] for f in got] == [1, 2, 3, 4]
        assert len({meta_of(f)["epoch"] for f in got}) == 1
    epoch = meta_of(got[1])["epoch"]
    await send_n(a, topic, 4, 8)  # offsets 5…12; 8…12 retained
    async with open_client(b, V2) as again:
        await again.join_ok(topic, {"broadcast": {"resume": {"epoch": epoch, "offset": 2}}})
        gap = await again.expect(system_msg(topic))
        assert gap.payload["message"] == "ResumeGap: 5 messages are no longer retained"
        assert gap.payload["gap"] == {"missed": 5, "epoch": epoch, "next": 8}
        replayed = [await again.expect(is_broadcast) for _ in range(5)]
        assert [f.broadcast_view()["payload"]["i"] for f in replayed] == list(range(7, 12))
        assert all(meta_of(f)["replayed"] is True for f in replayed)
        await again.assert_nothing_pending(is_broadcast)
