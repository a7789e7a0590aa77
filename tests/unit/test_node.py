"""The node (node.py) without a network: nodes of one process share the in-memory backbone
(the reference PubSub backend), subscribers record the frames written to them.

Checked: a node's own presence change is fanned out before ``track``/``untrack`` return (so a
reply written next comes after the diff), on its own node and once on the others; a function
sees every broadcast once whatever its source; the replication-ready wait is woken by the feed's
state arriving on the shared stream; unreadable control messages are ignored; health is typed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from realtime_channels.cdc.types import FeedState, ShareOp, StateShare
from realtime_channels.config import Settings
from realtime_channels.functions.engine import RealtimeEvent
from realtime_channels.node import CDC_STREAM, CONTROL_STREAM, Node
from realtime_channels.protocol.codec import Broadcast, Message, Vsn
from realtime_channels.protocol.keys import StreamKey, stream_key
from realtime_channels.pubsub import Envelope, Health
from realtime_channels.pubsub.memory import MemoryBroker, MemoryPubSub

STREAM = stream_key(False, "room1")
TOPIC = "realtime:room1"


@dataclass(eq=False)
class Peer:
    """A channel as the hub sees it: frames in arrival order, decoded for the assertions."""

    vsn: Vsn = Vsn.V1
    frames: list[Any] = field(default_factory=list)

    def write(self, frame: bytes) -> None:
        n, off = frame[1] & 0x7F, 2
        if n == 126:
            off = 4
        self.frames.append(orjson.loads(frame[off:]))

    def send(self, msg: Message) -> None:
        self.frames.append({"event": msg.event, "payload": msg.payload})

    def events(self) -> list[str]:
        return [f["event"] for f in self.frames]


@dataclass
class Sink:
    events: list[RealtimeEvent] = field(default_factory=list)

    def observe(self, ev: RealtimeEvent) -> None:
        self.events.append(ev)

    def metrics(self) -> Mapping[str, Mapping[str, float]]:
        return {}


@dataclass
class Feed:
    """A change feed reduced to its state: the reading node shares it on the CDC stream, and a
    node reading the slot itself tells its listeners."""

    state: FeedState = FeedState.CONNECTING
    shared: list[ShareOp] = field(default_factory=list)
    share: Callable[[ShareOp], None] | None = None
    listeners: list[Callable[[], None]] = field(default_factory=list)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def subscribe(self, conn_id: int, peer: Any, topic: str, join_ref: str | None,
                  bindings: Sequence[dict[str, Any]], claims: Mapping[str, Any]) -> None: ...

    def unsubscribe(self, conn_id: int, topic: str) -> None: ...

    def attach(self, share: Callable[[ShareOp], None]) -> None:
        self.share = share

    def handle_shared(self, op: ShareOp) -> None:
        self.shared.append(op)
        if isinstance(op, StateShare):
            self.state = op.state

    def add_state_listener(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def reader_state(self, state: FeedState) -> None:
        """What this node's own reader does when its state changes."""
        self.state = state
        for listener in self.listeners:
            listener()


def settings() -> Settings:
    # one diff per change, at once: these tests follow each op (coalescing: test_node_presence_coalescing.py)
    return Settings(max_events_per_second=1_000_000, max_presence_events_per_second=1_000_000, presence_coalesce_ms=0)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def started(loop: asyncio.AbstractEventLoop, *nodes: Node) -> None:
    for node in nodes:
        loop.run_until_complete(node.start())


def stopped(loop: asyncio.AbstractEventLoop, *nodes: Node) -> None:
    for node in nodes:
        loop.run_until_complete(node.stop())


def diffs(peer: Peer) -> list[dict[str, Any]]:
    return [f["payload"] for f in peer.frames if f.get("event") == "presence_diff"]


def test_own_track_and_untrack_are_fanned_out_before_they_return(loop: asyncio.AbstractEventLoop) -> None:
    broker = MemoryBroker()
    a, b = Node(settings(), MemoryPubSub(broker), "a"), Node(settings(), MemoryPubSub(broker), "b")
    started(loop, a, b)
    try:
        here, there = Peer(), Peer(Vsn.V2)
        a.subscribe(STREAM, (1, TOPIC), here)
        b.subscribe(STREAM, (2, TOPIC), there)
        a.track(STREAM, (1, TOPIC), "k", {"n": 1})
        # before anything else can be written to the socket, its own diff is there
        assert [list(d["joins"]) for d in diffs(here)] == [["k"]]
        a.untrack(STREAM, (1, TOPIC))
        assert [list(d["leaves"]) for d in diffs(here)] == [[], ["k"]]
        # the other node applies the same two ops once each (its own echo is not re-applied on a)
        assert len([f for f in there.frames if f[3] == "presence_diff"]) == 2
        assert a.presence_state(STREAM) == b.presence_state(STREAM) == {}
    finally:
        stopped(loop, a, b)


def test_a_node_ignores_its_own_ops_coming_back_and_unreadable_control_messages(
        loop: asyncio.AbstractEventLoop) -> None:
    node = Node(settings(), MemoryPubSub(), "a")
    started(loop, node)
    try:
        peer = Peer()
        node.subscribe(STREAM, (1, TOPIC), peer)
        node.track(STREAM, (1, TOPIC), "k", {})
        assert len(diffs(peer)) == 1  # applied once, although the backbone echoed it
        node.pubsub.publish(Envelope(CONTROL_STREAM, "z", control={"op": "track"}))  # no stream
        node.pubsub.publish(Envelope(CONTROL_STREAM, "z", control={"op": "from-a-newer-version"}))
        assert len(diffs(peer)) == 1
        assert list(node.presence_state(STREAM)) == ["k"]
    finally:
        stopped(loop, node)


def test_every_broadcast_source_reports_one_function_event(loop: asyncio.AbstractEventLoop) -> None:
    sink = Sink()
    node = Node(settings(), MemoryPubSub(), "a", events=sink)
    started(loop, node)
    try:
        peer = Peer()
        node.subscribe(STREAM, (1, TOPIC), peer)
        client = Broadcast(TOPIC, payload={"type": "broadcast", "event": "chat", "payload": {"t": "hi"}})
        node.publish(STREAM, client, claims={"sub": "u1"})
        node.publish(STREAM, Broadcast(TOPIC, event="rest", data=b'{"r":1}'), claims={"role": "service_role"})
        node.publish_from_database("id-1", "room1", "db", False, b'{"d":2}', False)
        node.publish_from_database("id-2", "room1", "bin", False, b"\x00\x01", True)
        assert [(e.type, e.topic, e.event, e.payload, e.claims) for e in sink.events] == [
            ("broadcast", "room1", "chat", {"t": "hi"}, {"sub": "u1"}),
            ("broadcast", "room1", "rest", {"r": 1}, {"role": "service_role"}),
            ("broadcast", "room1", "db", {"d": 2}, None),
            ("broadcast", "room1", "bin", b"\x00\x01", None),
        ]
        # each reached the subscriber once, but for the binary one: a V1 socket cannot carry bytes
        assert [f["payload"]["event"] for f in peer.frames] == ["chat", "rest", "db"]
    finally:
        stopped(loop, node)


def test_the_replication_wait_is_woken_by_the_shared_state(loop: asyncio.AbstractEventLoop) -> None:
    feed = Feed()
    node = Node(settings(), MemoryPubSub(), "a", changes=feed)  # type: ignore[arg-type]
    started(loop, node)
    try:
        waiter = loop.create_task(node.replication_streaming())
        loop.run_until_complete(asyncio.sleep(0))
        assert not waiter.done()
        assert feed.share is not None
        feed.share(StateShare(FeedState.CONNECTING))
        loop.run_until_complete(asyncio.sleep(0))
        assert not waiter.done()
        feed.share(StateShare(FeedState.STREAMING))  # what the reading node shares
        loop.run_until_complete(asyncio.wait_for(waiter, 1))
        assert feed.shared[-1] == StateShare(FeedState.STREAMING)
        # once streaming, the wait returns at once
        loop.run_until_complete(asyncio.wait_for(node.replication_streaming(), 1))
    finally:
        stopped(loop, node)


def test_the_replication_wait_is_woken_by_the_nodes_own_reader(loop: asyncio.AbstractEventLoop) -> None:
    """A single node reads the slot itself and shares nothing: its reader's state wakes the wait."""
    feed = Feed()
    node = Node(settings(), MemoryPubSub(), "a", changes=feed)  # type: ignore[arg-type]
    started(loop, node)
    try:
        waiter = loop.create_task(node.replication_streaming())
        loop.run_until_complete(asyncio.sleep(0))
        feed.reader_state(FeedState.CONNECTING)
        loop.run_until_complete(asyncio.sleep(0))
        assert not waiter.done()
        feed.reader_state(FeedState.STREAMING)
        loop.run_until_complete(asyncio.wait_for(waiter, 1))
    finally:
        stopped(loop, node)


def test_the_cdc_and_control_streams_are_not_client_streams() -> None:
    assert CDC_STREAM != CONTROL_STREAM
    assert not CDC_STREAM.startswith(("pub:", "priv:", "privp:"))
    assert not CONTROL_STREAM.startswith(("pub:", "priv:", "privp:"))
    assert isinstance(stream_key(True, "x"), str) and stream_key(True, "x") == StreamKey("priv:x")


def test_the_memory_backbone_is_always_connected() -> None:
    assert MemoryPubSub().health is Health.CONNECTED
    assert Health("degraded") is Health.DEGRADED
