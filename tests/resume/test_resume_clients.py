"""The official clients with the resume helpers (clients/js/resumable.mjs,
``realtime_channels.client.resumable``): a subscriber whose TCP connection is cut by a proxy
while 1,000 broadcasts flow receives every one exactly once and in order — on one node, and
across two nodes on Redis when it reconnects to the other node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rawclient import unique_topic
from resumekit import TOTAL, js_subscriber, outage, publish, python_subscriber
from support import wait_until
from tcpproxy import TcpProxy

pytestmark = pytest.mark.asyncio


async def test_js_subscriber_cut_off_by_the_network_gets_every_broadcast_once(server_factory: Any) -> None:
    server = server_factory()
    proxy = TcpProxy(server.port)
    await proxy.start()
    topic = unique_topic("resume-js")
    try:
        async with js_subscriber(proxy, server.anon_key, topic) as sub:
            await wait_until(lambda: "SUBSCRIBED" in sub["status"], 20, "the JS subscriber to join")
            await outage(server, proxy, topic, lambda: [m["i"] for m in sub["msgs"]],
                             lambda: sub["status"].count("SUBSCRIBED"))
            replayed = [m for m in sub["msgs"] if m["meta"].get("replayed")]
            assert replayed, "the messages sent during the outage came from the replay"
            assert [m["meta"]["offset"] for m in sub["msgs"]] == list(range(1, TOTAL + 1))
            assert sub["system"] == []  # nothing was lost: no gap message
    finally:
        await proxy.close()


async def _python_outage(proxy: TcpProxy, publish_to: Any, key: str, topic: str,
                         on_cut: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    async with python_subscriber(proxy, key, topic.removeprefix("realtime:")) as sub:
        await outage(publish_to, proxy, topic, lambda: [m["payload"]["i"] for m in sub.broadcasts],
                         lambda: sub.subscribed, on_cut)
        assert sub.channel.resume_position.broadcast is not None
        assert sub.channel.resume_position.broadcast[1] == TOTAL
        return sub.broadcasts


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
