"""The official clients on different nodes of one Redis-backed cluster.

supabase-js / realtime-js (through the Node peer, vsn 2.0.0 and 1.0.0) and the Python
``realtime`` client (vsn 1.0.0), each connected to a different server process, exchange
broadcasts and see each other's presence — including a third client joining late on the third
node, whose first sync must list the members tracked on the other two.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from clusterkit import Cluster
from peers import (  # noqa: F401 - node is a fixture
    NodePeer,
    PyClient,
    is_broadcast,
    is_presence,
    node,
    unique_topic,
)
from support import ServerProc

VSNS = ["2.0.0", "1.0.0"]
MakePy = Callable[..., PyClient]


@pytest.fixture
async def py_on() -> AsyncIterator[Callable[[ServerProc, str], PyClient]]:
    """Python clients bound to a chosen node; closed at test end."""
    made: list[PyClient] = []

    def make(server: ServerProc, name: str) -> PyClient:
        client = PyClient(server, name)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.close()


def _strip(presence: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in presence.items() if k != "presence_ref"}


@pytest.mark.parametrize("vsn", VSNS)
async def test_js_and_python_on_different_nodes_exchange_broadcasts(
    cluster: Cluster, node: NodePeer, py_on: Callable[[ServerProc, str], PyClient], vsn: str
) -> None:
    a, b, c = cluster.nodes
    topic = unique_topic("cl-bcast")
    py = py_on(b, "py")
    await py.subscribe("rx", topic)
    await node.add_client("js-c", c, vsn)
    await node.subscribe("js-c", "jc", topic)
    await node.add_client("js-a", a, vsn)
    await node.subscribe("js-a", "ja", topic)

    payload = {"x": 1, "text": "ünïcødé", "list": [1.5, None, True]}
    assert await node.call("send", ch="ja", event="from-js", payload=payload) == "ok"
    got = await py.wait_broadcast("rx", "from-js")
    assert got["raw"] == {"event": "from-js", "payload": payload}
    assert (await node.wait_broadcast("jc", "from-js"))["payload"] == payload

    await py.channels["rx"].send_broadcast("from-py", {"n": 2})
    for ch in ("ja", "jc"):
        got_js = await node.wait_broadcast(ch, "from-py")
        assert got_js["payload"] == {"n": 2} and got_js["binary"] is False
    # self:false on every client: nobody got its own message back; the JS sender's barrier is
    # the Python message, sent after its own one was delivered on B
    assert node.broadcasts("ja", "from-js") == []
    assert py.broadcasts("rx", "from-py") == []

    # REST on the third node reaches both client families
    assert await node.call("httpSend", ch="jc", event="via-rest", payload={"r": 1}) is not None
    assert (await py.wait_broadcast("rx", "via-rest"))["payload"] == {"r": 1}
    assert (await node.wait_broadcast("ja", "via-rest"))["payload"] == {"r": 1}


@pytest.mark.parametrize("vsn", VSNS)
async def test_js_and_python_on_different_nodes_see_each_others_presence(
    cluster: Cluster, node: NodePeer, py_on: Callable[[ServerProc, str], PyClient], vsn: str
) -> None:
    a, b, c = cluster.nodes
    topic = unique_topic("cl-presence")
    py = py_on(b, "py")
    await py.subscribe("p", topic, presence=True, presence_key="py-user")
    await node.add_client("js", a, vsn)
    await node.subscribe("js", "j", topic, config={"presence": {"key": "js-user"}}, presence=True)

    assert await node.call("track", ch="j", payload={"client": "js"}) == "ok"
    joined = await py.log.wait_for(is_presence("p", "join", "js-user"), what="python on B sees the JS presence on A")
    assert [_strip(p) for p in joined["presences"]] == [{"client": "js"}]

    await py.channels["p"].track({"client": "python"})
    js_join = await node.log.wait_for(is_presence("j", "join", "py-user"), what="JS on A sees the Python presence on B")
    assert [_strip(p) for p in js_join["presences"]] == [{"client": "python"}]

    # a late JS client on C: its first sync already lists the members tracked on A and B
    await node.add_client("late", c, vsn)
    await node.subscribe("late", "l", topic, config={"presence": {"key": "late"}}, presence=True)

    def lists_both(e: dict[str, Any]) -> bool:
        return is_presence("l", "sync")(e) and sorted(e["state"]) == ["js-user", "py-user"]

    await node.log.wait_for(lists_both, what="the late client on C to list both presences")

    await py.channels["p"].untrack()
    for ch in ("j", "l"):
        await node.log.wait_for(is_presence(ch, "leave", "py-user"), what=f"{ch} to see the Python untrack")
    assert await node.call("unsubscribe", ch="j") == "ok"
    left = await py.log.wait_for(is_presence("p", "leave", "js-user"), what="python sees the JS leave")
    assert [_strip(p) for p in left["presences"]] == [{"client": "js"}]
    assert py.channels["p"].presence_state() == {}
