"""The official clients with the resume helpers (clients/js/resumable.mjs,
``realtime_channels.client.resumable``): a subscriber whose TCP connection is cut by a proxy
while 1,000 broadcasts flow receives every one exactly once and in order — on one node, and
across two nodes on Redis when it reconnects to the other node."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from rawclient import V2, open_client, unique_topic
from support import wait_until
from tcpproxy import TcpProxy

pytestmark = pytest.mark.asyncio

TOTAL = 1000
CUT_AT = 300
PEER = os.path.join(os.path.dirname(__file__), "resume_peer.mjs")


async def publish(server: Any, topic: str, first: int, count: int, pace_s: float = 0.0) -> None:
    """Broadcasts ``n`` with ``{"i": first…}``, each acked (taken for fan-out) before the next;
    ``pace_s`` spreads them out so that some arrive while the subscriber rejoins."""
    async with open_client(server, V2) as pub:
        await pub.join_ok(topic, {"broadcast": {"ack": True}})
        for i in range(first, first + count):
            ref = await pub.broadcast(topic, "n", {"i": i})
            await pub.expect(lambda f, ref=ref: f.ref == ref and f.event == "phx_reply")
            if pace_s:
                await asyncio.sleep(pace_s)  # pacing the sender, not waiting for a condition


async def run_outage(publish_to: Any, proxy: TcpProxy, topic: str, received: Callable[[], list[int]],
                     subscribed: Callable[[], int], on_cut: Callable[[], None] = lambda: None) -> None:
    """300 broadcasts; cut the subscriber off for 5 s while 400 more flow; 300 more spread over
    the reconnect; then wait for all 1,000."""
    await publish(publish_to, topic, 0, CUT_AT)
    await wait_until(lambda: len(received()) >= CUT_AT, 20, "the first 300 broadcasts")
    proxy.cut(5.0)
    on_cut()
    await publish(publish_to, topic, CUT_AT, 400)
    tail = asyncio.create_task(publish(publish_to, topic, CUT_AT + 400, TOTAL - CUT_AT - 400, pace_s=0.02))
    await wait_until(lambda: subscribed() >= 2, 30, "the automatic rejoin")
    await tail
    await wait_until(lambda: len(received()) >= TOTAL, 30, "all 1,000 broadcasts")
    assert received() == list(range(TOTAL))
    assert proxy.refused >= 1  # the client did try while it was cut off


@asynccontextmanager
async def js_subscriber(proxy: TcpProxy, key: str, topic: str) -> AsyncIterator[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        "node", PEER, f"http://127.0.0.1:{proxy.port}", key, topic.removeprefix("realtime:"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    state: dict[str, Any] = {"msgs": [], "status": [], "system": []}

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            ev = json.loads(line)
            if ev["type"] == "msg":
                state["msgs"].append(ev)
            elif ev["type"] == "status":
                state["status"].append(ev["status"])
            else:
                state["system"].append(ev["payload"])

    reader = asyncio.create_task(read())
    try:
        yield state
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await proc.wait()
        await reader


async def test_js_subscriber_cut_off_by_the_network_gets_every_broadcast_once(server_factory: Any) -> None:
    server = server_factory()
    proxy = TcpProxy(server.port)
    await proxy.start()
    topic = unique_topic("resume-js")
    try:
        async with js_subscriber(proxy, server.anon_key, topic) as sub:
            await wait_until(lambda: "SUBSCRIBED" in sub["status"], 20, "the JS subscriber to join")
            await run_outage(server, proxy, topic, lambda: [m["i"] for m in sub["msgs"]],
                             lambda: sub["status"].count("SUBSCRIBED"))
            replayed = [m for m in sub["msgs"] if m["meta"].get("replayed")]
            assert replayed, "the messages sent during the outage came from the replay"
            assert [m["meta"]["offset"] for m in sub["msgs"]] == list(range(1, TOTAL + 1))
            assert sub["system"] == []  # nothing was lost: no gap message
    finally:
        await proxy.close()


async def _python_outage(proxy: TcpProxy, publish_to: Any, key: str, topic: str,
                         on_cut: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

    from realtime_channels.client import resumable

    client = AsyncRealtimeClient(f"{proxy.ws_url}/socket", key, auto_reconnect=True, initial_backoff=0.5)
    got: list[dict[str, Any]] = []
    subscribed: list[int] = []
    try:
        channel = resumable(client.channel(topic.removeprefix("realtime:")))
        channel.on_broadcast("n", lambda m: got.append(m))

        def on_state(state: RealtimeSubscribeStates, _err: Exception | None) -> None:
            if state == RealtimeSubscribeStates.SUBSCRIBED:
                subscribed.append(1)

        await channel.subscribe(on_state)
        await run_outage(publish_to, proxy, topic, lambda: [m["payload"]["i"] for m in got],
                         lambda: len(subscribed), on_cut)
        assert channel.resume_position.broadcast is not None
        assert channel.resume_position.broadcast[1] == TOTAL
    finally:
        await client.close()
    return got


async def test_python_subscriber_cut_off_by_the_network_gets_every_broadcast_once(server_factory: Any) -> None:
    server = server_factory()
    proxy = TcpProxy(server.port)
    await proxy.start()
    try:
        await _python_outage(proxy, server, server.anon_key, unique_topic("resume-py"))
    finally:
        await proxy.close()


async def test_resume_on_the_other_node_of_a_redis_cluster(make_cluster: Any) -> None:
    cluster = make_cluster(2)
    first, second = cluster.nodes
    proxy = TcpProxy(first.port)
    await proxy.start()
    try:
        # the subscriber starts on the first node and comes back through the second; the
        # broadcasts are sent to the second node all along
        await _python_outage(proxy, second, first.anon_key, unique_topic("resume-redis"),
                             on_cut=lambda: proxy.retarget(second.port))
    finally:
        await proxy.close()


async def test_stock_clients_ask_for_nothing_and_behave_as_before(server: Any) -> None:
    from realtime import AsyncRealtimeClient

    topic = unique_topic("stock")
    client = AsyncRealtimeClient(f"{server.ws_url}/socket", server.anon_key)
    try:
        channel = client.channel(topic.removeprefix("realtime:"))
        got: list[dict[str, Any]] = []
        channel.on_broadcast("n", lambda m: got.append(m))
        await channel.subscribe()
        assert "resume" not in (channel.join_push.payload["config"].get("broadcast") or {})
        await publish(server, topic, 0, 3)
        await wait_until(lambda: len(got) == 3, 10, "three broadcasts")
        assert [m["payload"] for m in got] == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert [m for m in got if "meta" in m] == []
    finally:
        await client.close()
