"""Conformance across client families: JS (vsn 2.0.0 / 1.0.0) <-> Python (vsn 1.0.0).

protocol.md §4.3 is the contract: JSON broadcasts reach every receiver whatever its serializer;
binary payloads reach V2 receivers only; presence is shared by all members of a topic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from peers import (  # noqa: F401 - node and py_clients are fixtures
    NodePeer,
    PyClient,
    is_broadcast,
    is_presence,
    node,
    py_clients,
    unique_topic,
)

VSNS = ["2.0.0", "1.0.0"]
MakePy = Callable[..., PyClient]


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(53)
async def test_broadcast_js_to_python(server: Any, node: NodePeer, py_clients: MakePy, vsn: str) -> None:
    topic = unique_topic("js-py")
    py = py_clients("py")
    await py.subscribe("rx", topic)
    await node.add_client("js", server, vsn)
    await node.subscribe("js", "tx", topic)

    payload = {"x": 1, "y": [1.5, "z"], "ok": True, "none": None, "text": "ünïcødé"}
    assert await node.call("send", ch="tx", event="cursor", payload=payload) == "ok"
    got = await py.wait_broadcast("rx", "cursor")
    # A kind-3 JSON push reaches V1 receivers as {"event","payload","type"} (§4.3); the Python
    # client's validation keeps event/payload (and meta, which must be absent here).
    assert got["raw"] == {"event": "cursor", "payload": payload}


@pytest.mark.parametrize("vsn", VSNS)
async def test_broadcast_python_to_js(server: Any, node: NodePeer, py_clients: MakePy, vsn: str) -> None:
    topic = unique_topic("py-js")
    await node.add_client("js", server, vsn)
    await node.subscribe("js", "rx", topic)
    py = py_clients("py")
    await py.subscribe("tx", topic)

    await py.channels["tx"].send_broadcast("Ping", {"from": "python", "n": 3})
    got = await node.wait_broadcast("rx", "Ping")
    assert got["payload"] == {"from": "python", "n": 3}
    assert got["binary"] is False
    assert got["keys"] == ["event", "payload", "type"]


@pytest.mark.compat(54)
async def test_binary_reaches_v2_clients_only(server: Any, node: NodePeer, py_clients: MakePy) -> None:
    topic = unique_topic("bin-x")
    py = py_clients("py")
    await py.subscribe("pyrx", topic)
    await node.add_client("v2", server, "2.0.0")
    await node.add_client("v1", server, "1.0.0")
    await node.add_client("sender", server, "2.0.0")
    await node.subscribe("v2", "v2rx", topic)
    await node.subscribe("v1", "v1rx", topic)
    await node.subscribe("sender", "tx", topic)

    data = bytes(range(255, -1, -1))
    assert await node.call("send", ch="tx", event="blob", binary=data.hex()) == "ok"
    assert await node.call("send", ch="tx", event="marker", payload={"after": "blob"}) == "ok"

    got = await node.wait_broadcast("v2rx", "blob")
    assert got["binary"] is True and bytes.fromhex(got["payload"]) == data
    # Same sender, same channel: the marker is delivered after the (skipped) blob.
    await py.wait_broadcast("pyrx", "marker", {"after": "blob"})
    await node.wait_broadcast("v1rx", "marker", {"after": "blob"})
    assert py.broadcasts("pyrx", "blob") == []
    assert node.broadcasts("v1rx", "blob") == []


@pytest.mark.compat(62)
async def test_python_http_send_binary_reaches_js(server: Any, node: NodePeer, py_clients: MakePy) -> None:
    topic = unique_topic("py-http-bin")
    await node.add_client("js", server, "2.0.0")
    await node.subscribe("js", "rx", topic)
    pyrx = py_clients("pyrx")
    await pyrx.subscribe("rx", topic)
    rest = py_clients("rest")
    channel = rest.client.channel(topic)

    data = b"\x89PNG\r\n\x1a\n\x00\xff"
    await channel.http_send("image", data)  # application/octet-stream -> 202
    await channel.http_send("marker", {"after": "image"})

    got = await node.wait_broadcast("rx", "image")
    assert got["binary"] is True and bytes.fromhex(got["payload"]) == data
    await node.wait_broadcast("rx", "marker")
    await pyrx.wait_broadcast("rx", "marker", {"after": "image"})
    assert pyrx.broadcasts("rx", "image") == []


@pytest.mark.parametrize("vsn", VSNS)
async def test_js_http_send_and_fallback_reach_python(
    server: Any, node: NodePeer, py_clients: MakePy, vsn: str
) -> None:
    topic = unique_topic("js-rest-py")
    py = py_clients("py")
    await py.subscribe("rx", topic)
    await node.add_client("js", server, vsn)
    await node.call("channel", client="js", ch="tx", topic=topic)

    assert await node.call("httpSend", ch="tx", event="single", payload={"n": 1}) == {"success": True}
    assert await node.call("send", ch="tx", event="batch", payload={"n": 2}) == "ok"  # REST fallback
    single = await py.wait_broadcast("rx", "single")
    batch = await py.wait_broadcast("rx", "batch")
    assert single["raw"] == {"event": "single", "payload": {"n": 1}}
    assert batch["raw"] == {"event": "batch", "payload": {"n": 2}}


@pytest.mark.parametrize("vsn", VSNS)
async def test_burst_order_js_to_python_and_back(
    server: Any, node: NodePeer, py_clients: MakePy, vsn: str
) -> None:
    topic = unique_topic("burst-x")
    py = py_clients("py")
    await py.subscribe("rx", topic)
    await node.add_client("js", server, vsn)
    await node.subscribe("js", "tx", topic)

    assert await node.call("sendBurst", ch="tx", event="seq", count=100) == ["ok"] * 100
    got = await py.log.wait_count(is_broadcast("rx", "seq"), 100, what="100 'seq' from JS")
    assert [e["payload"]["i"] for e in got] == list(range(100))

    for i in range(100):
        await py.channels["rx"].send_broadcast("back", {"i": i})
    back = await node.log.wait_count(is_broadcast("tx", "back"), 100, what="100 'back' from Python")
    assert [e["payload"]["i"] for e in back] == list(range(100))


@pytest.mark.parametrize("vsn", VSNS)
async def test_presence_across_js_and_python(
    server: Any, node: NodePeer, py_clients: MakePy, vsn: str
) -> None:
    topic = unique_topic("presence-x")
    py = py_clients("py")
    await py.subscribe("p", topic, presence=True, presence_key="py-user")
    await node.add_client("js", server, vsn)
    await node.subscribe("js", "j", topic, config={"presence": {"key": "js-user"}}, presence=True)

    assert await node.call("track", ch="j", payload={"client": "js"}) == "ok"
    joined = await py.log.wait_for(is_presence("p", "join", "js-user"), what="python sees the JS presence")
    assert [_strip(p) for p in joined["presences"]] == [{"client": "js"}]

    await py.channels["p"].track({"client": "python"})
    js_join = await node.log.wait_for(is_presence("j", "join", "py-user"), what="JS sees the Python presence")
    assert [_strip(p) for p in js_join["presences"]] == [{"client": "python"}]

    def both_listed(e: dict[str, Any]) -> bool:
        return is_presence("j", "sync")(e) and sorted(e["state"]) == ["js-user", "py-user"]

    await node.log.wait_for(both_listed, what="a JS sync listing both presences")

    await py.channels["p"].untrack()
    await node.log.wait_for(is_presence("j", "leave", "py-user"), what="JS sees the Python untrack")

    assert await node.call("unsubscribe", ch="j") == "ok"
    left = await py.log.wait_for(is_presence("p", "leave", "js-user"), what="python sees the JS leave")
    assert [_strip(p) for p in left["presences"]] == [{"client": "js"}]
    assert py.channels["p"].presence_state() == {}


def _strip(presence: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in presence.items() if k != "presence_ref"}
