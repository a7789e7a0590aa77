"""Presence diffs coalesced per topic (``REALTIME_PRESENCE_COALESCE_MS``, node.py
``_fanout_diffs``): the members of a topic get the changes of a window as one diff; the channel
whose push caused a change gets its own diff at once (before its push's reply) and the window's
other changes without its own again; a channel joining meanwhile gets them before its state."""

from __future__ import annotations

from typing import Any

import orjson
from support import wait_until

from realtime_channels.config import Settings
from realtime_channels.node import Node
from realtime_channels.protocol.codec import Vsn
from realtime_channels.protocol.keys import StreamKey
from realtime_channels.pubsub.memory import MemoryPubSub

STREAM = StreamKey("pub:room")
TOPIC = "realtime:room"


class Peer:
    def __init__(self) -> None:
        self.frames: list[Any] = []

    @property
    def vsn(self) -> Vsn:
        return Vsn.V1

    def write(self, frame: bytes) -> None:
        payload = frame[2:] if frame[1] < 126 else frame[4:] if frame[1] == 126 else frame[10:]
        self.frames.append(orjson.loads(payload))

    def diffs(self) -> list[dict[str, Any]]:
        return [f["payload"] for f in self.frames if f["event"] == "presence_diff"]


async def test_a_window_of_joins_is_one_diff_and_each_pusher_hears_its_own_at_once() -> None:
    node = Node(Settings(presence_coalesce_ms=60_000, max_presence_events_per_second=1_000_000),
                MemoryPubSub(), "n")
    await node.start()
    try:
        watcher, members = Peer(), [Peer() for _ in range(10)]
        node.subscribe(STREAM, (0, TOPIC), watcher)
        for i, peer in enumerate(members, start=1):
            node.subscribe(STREAM, (i, TOPIC), peer)
        for i in range(1, 11):
            assert node.track(STREAM, (i, TOPIC), f"m{i}", {"i": i})
            # the pusher's own diff is written before track() returns (so before its reply)
            assert [list(d["joins"]) for d in members[i - 1].diffs()] == [[f"m{i}"]]
        assert watcher.diffs() == [], "the others wait for the window"
        # a channel joining now is told what is due first (presence_state flushes the window)
        state = node.presence_state(STREAM)
        assert sorted(state) == sorted(f"m{i}" for i in range(1, 11))
        [merged] = watcher.diffs()
        assert sorted(merged["joins"]) == sorted(f"m{i}" for i in range(1, 11)) and merged["leaves"] == {}
        for i, peer in enumerate(members, start=1):
            own, others = peer.diffs()
            assert list(own["joins"]) == [f"m{i}"]
            assert sorted(others["joins"]) == sorted(f"m{j}" for j in range(1, 11) if j != i)
        # a join and a leave of one window arrive together; clients apply joins, then leaves
        node.track(STREAM, (1, TOPIC), "m1", {"i": 100})
        node.untrack(STREAM, (2, TOPIC))
        node.presence_state(STREAM)
        last = watcher.diffs()[-1]
        assert [m["i"] for m in last["joins"]["m1"]["metas"]] == [100]
        assert sorted(last["leaves"]) == ["m1", "m2"]
    finally:
        await node.stop()


async def test_the_window_closes_by_itself() -> None:
    node = Node(Settings(presence_coalesce_ms=5), MemoryPubSub(), "n")
    await node.start()
    try:
        watcher = Peer()
        node.subscribe(STREAM, (0, TOPIC), watcher)
        node.track(STREAM, (1, TOPIC), "a", {})
        node.track(STREAM, (2, TOPIC), "b", {})
        await wait_until(lambda: watcher.diffs() or None, 5, "the window's timer to send the diff")
        assert [sorted(d["joins"]) for d in watcher.diffs()] == [["a", "b"]]
    finally:
        await node.stop()
