"""Scale-out on Redis: several server processes on one real ``redis-server``.

Each process is a node.  Raw clients on different nodes must see one channel: broadcasts (V1,
V2, kind 3; self/ack unchanged; per-sender order), REST broadcasts, presence state and diffs.
Faults: a node SIGKILLed (its members leave everywhere within 10 s, and do not come back with
a restarted process), Redis SIGKILLed and restarted under traffic (local delivery continues,
``/health`` degraded then ok, delivery and presence resume, no traceback).  ``--workers``
needs Redis and then serves one port from several processes.  Tenant limits are cluster-wide.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from clusterkit import CONVERGE_S, Cluster, assert_no_traceback, health, wait_async, wait_until
from rawclient import V1, V2, VSNS, Frame, RawClient, event_is, open_client, reply_to, sub_topic, unique_topic
from support import TEST_SECRET, ServerProc, free_port, make_token
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

OK_REPLY = {"status": "ok", "response": {}}
PRESENCE_ON = {"presence": {"enabled": True}}
#: a dead node's members leave everywhere within 10 s
NODE_DEATH_LEAVE_S = 10.0
#: Redis reconnect back-off tops out at 5 s (pubsub/redis.py); resync follows within a heartbeat
RECOVER_S = 20.0


def is_broadcast(f: Frame) -> bool:
    return bool(f.event == "broadcast")


def with_key(key: str) -> dict[str, Any]:
    return {"presence": {"enabled": True, "key": key}}


def data_of(frame: Frame) -> Any:
    """The user payload of a broadcast delivery, whatever the serializer/frame kind."""
    return frame.broadcast_view()["payload"]


async def track(c: RawClient, topic: str, payload: Any) -> None:
    ref = await c.push(topic, "presence", {"type": "presence", "event": "track", "payload": payload})
    frame = await c.expect(reply_to(ref, topic))
    assert frame.value == c.wire(c.join_refs[topic], ref, topic, "phx_reply", OK_REPLY)


async def untrack(c: RawClient, topic: str) -> None:
    ref = await c.push(topic, "presence", {"type": "presence", "event": "untrack"})
    frame = await c.expect(reply_to(ref, topic))
    assert frame.value == c.wire(c.join_refs[topic], ref, topic, "phx_reply", OK_REPLY)


def diff_with(topic: str, *, joins: str | None = None, leaves: str | None = None) -> Callable[[Frame], bool]:
    def pred(f: Frame) -> bool:
        if f.event != "presence_diff" or f.topic != topic:
            return False
        return (joins is None or joins in f.payload["joins"]) and (leaves is None or leaves in f.payload["leaves"])

    return pred


async def until_seen(c: RawClient, topic: str, side: str, keys: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The metas of ``keys`` in ``side`` ("joins" or "leaves") of the diffs ``c`` receives, until
    every key has been seen: changes within REALTIME_PRESENCE_COALESCE_MS share one diff."""
    seen: dict[str, list[dict[str, Any]]] = {}
    while not keys <= set(seen):
        frame = await c.expect(lambda f: f.event == "presence_diff" and f.topic == topic)
        for key, entry in frame.payload[side].items():
            seen.setdefault(key, []).extend(entry["metas"])
    return seen


async def presence_state_on(node: ServerProc, topic: str) -> dict[str, Any]:
    """What a client joining ``topic`` on ``node`` now is told (§5.2)."""
    async with open_client(node, V1) as c:
        await c.join_ok(topic, PRESENCE_ON)
        state: dict[str, Any] = (await c.expect(event_is("presence_state", topic))).payload
        return state


def metas(state: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "phx_ref"} for m in state.get(key, {}).get("metas", [])]


async def post_broadcast(node: ServerProc, messages: list[dict[str, Any]]) -> int:
    headers = {"apikey": node.anon_key, "Authorization": f"Bearer {node.service_key}",
               "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.http_url}/api/broadcast", json={"messages": messages}, headers=headers) as r:
            return r.status


# --- broadcast across nodes (§4) -----------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
async def test_broadcast_reaches_other_nodes_with_self_and_ack(cluster: Cluster, vsn: str) -> None:
    a, b, c = cluster.nodes
    topic = unique_topic("x-node")
    payload = {"type": "broadcast", "event": "cursor", "payload": {"x": 1, "s": "é"}}
    async with open_client(a, vsn) as sender, open_client(b, V1) as rb, open_client(c, V2) as rc:
        await rb.join_ok(topic)
        await rc.join_ok(topic)
        jr = await sender.join_ok(topic, {"broadcast": {"self": True, "ack": True}})
        ref = await sender.push(topic, "broadcast", payload)
        assert (await sender.expect(reply_to(ref, topic))).value == sender.wire(jr, ref, topic, "phx_reply", OK_REPLY)
        echo = await sender.expect(is_broadcast)  # self:true — the echo comes through the backbone
        assert echo.value == sender.wire(None, None, topic, "broadcast", payload)
        for r in (rb, rc):
            frame = await r.expect(is_broadcast)
            assert frame.value == r.wire(None, None, topic, "broadcast", payload)

        # self:false and ack:false on node B: no echo and no reply there, delivered on A and C
        quiet = {"type": "broadcast", "event": "quiet", "payload": {"from": "b"}}
        await rb.push(topic, "broadcast", quiet)
        for r in (sender, rc):
            assert (await r.expect(is_broadcast)).value == r.wire(None, None, topic, "broadcast", quiet)
        # barrier: a later message from C reaches B; B's own message must not have come first
        await rc.push(topic, "broadcast", {"type": "broadcast", "event": "barrier", "payload": {}})
        barrier = await rb.expect(is_broadcast)
        assert barrier.broadcast_view()["event"] == "barrier"
        assert [f for f in rb.received if f.event == "phx_reply" and f.ref != rb.join_refs[topic]] == []


async def test_kind3_reaches_v1_and_v2_on_other_nodes(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    topic = unique_topic("x-kind3")
    async with open_client(a, V2) as sender, open_client(b, V1) as v1, open_client(c, V2) as v2:
        for client in (v1, v2, sender):
            await client.join_ok(topic)
        await sender.send_kind3(topic, "cursor", b'{"x":1}', 1)
        await sender.send_kind3(topic, "blob", b"\x00\x01\xff", 0)
        await sender.send_kind3(topic, "after", b'{"ok":true}', 1)
        f1 = await v1.expect(is_broadcast)
        assert f1.value == {"topic": topic, "event": "broadcast", "ref": None,
                            "payload": {"event": "cursor", "payload": {"x": 1}, "type": "broadcast"}}
        # the binary one is for V2 receivers only (§4.3): the V1 client's next delivery is "after"
        assert (await v1.expect(is_broadcast)).broadcast_view()["event"] == "after"
        views = [(await v2.expect(is_broadcast)) for _ in range(3)]
        assert [v.broadcast_view()["event"] for v in views] == ["cursor", "blob", "after"]
        assert views[1].is_binary and views[1].data == b"\x00\x01\xff" and views[1].encoding == 0
        assert data_of(views[0]) == {"x": 1}


async def test_a_join_completed_on_one_node_receives_what_is_sent_next_on_another(cluster: Cluster) -> None:
    """Once the join reply arrived, a message sent afterwards from any node is delivered."""
    a, b, _ = cluster.nodes
    async with open_client(a, V2) as sender, open_client(b, V2) as receiver:
        for i in range(15):
            topic = unique_topic(f"x-race{i}")
            await sender.join_ok(topic)
            await receiver.join_ok(topic)
            await sender.push(topic, "broadcast", {"type": "broadcast", "event": "first", "payload": {"i": i}})
            assert data_of(await receiver.expect(is_broadcast)) == {"i": i}


@pytest.mark.parametrize("vsn", VSNS)
async def test_per_sender_order_of_200_messages_across_nodes(cluster: Cluster, vsn: str) -> None:
    a, b, c = cluster.nodes
    topic = unique_topic("x-order")
    n = 200
    async with (
        open_client(a, vsn) as s1,
        open_client(b, vsn) as s2,
        open_client(c, V1) as r1,
        open_client(b, V2) as r2,
    ):
        for client in (r1, r2, s1, s2):
            await client.join_ok(topic)
        for i in range(n):  # two senders on two nodes, interleaved
            await s1.push(topic, "broadcast", {"type": "broadcast", "event": "s1", "payload": {"i": i}})
            await s2.push(topic, "broadcast", {"type": "broadcast", "event": "s2", "payload": {"i": i}})
        for r in (r1, r2):
            seen: dict[str, list[int]] = {"s1": [], "s2": []}
            for _ in range(2 * n):
                frame = await r.expect(is_broadcast, timeout=10)
                view = frame.broadcast_view()
                seen[view["event"]].append(view["payload"]["i"])
            assert seen == {"s1": list(range(n)), "s2": list(range(n))}
        # each sender receives the other one's messages, in order, and not its own (self:false)
        for s, other in ((s1, "s2"), (s2, "s1")):
            got = [(await s.expect(is_broadcast, timeout=10)).broadcast_view() for _ in range(n)]
            assert [g["event"] for g in got] == [other] * n
            assert [g["payload"]["i"] for g in got] == list(range(n))


async def test_rest_broadcast_on_one_node_reaches_subscribers_on_every_node(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    topic = unique_topic("x-rest")
    async with open_client(a, V1) as ra, open_client(b, V2) as rb, open_client(c, V1) as rc:
        for r in (ra, rb, rc):
            await r.join_ok(topic)
        status = await post_broadcast(a, [
            {"topic": sub_topic(topic), "event": "note", "payload": {"n": 1}},
            {"topic": sub_topic(topic), "event": "note", "payload": {"n": 2}},
        ])
        assert status == 202
        for r in (ra, rb, rc):
            got = [(await r.expect(is_broadcast)).broadcast_view() for _ in range(2)]
            assert got == [{"type": "broadcast", "event": "note", "payload": {"n": 1}},
                           {"type": "broadcast", "event": "note", "payload": {"n": 2}}]


# --- presence across nodes (§5) ------------------------------------------------------------


async def test_presence_state_and_diffs_span_every_node(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    topic = unique_topic("x-presence")
    async with (
        open_client(a, V2) as alice,
        open_client(b, V1) as bob,
        open_client(c, V2) as carol,
        open_client(c, V1) as watcher,
    ):
        await watcher.join_ok(topic, PRESENCE_ON)
        await watcher.expect(event_is("presence_state", topic))
        for client, key, node_name in ((alice, "alice", "a"), (bob, "bob", "b"), (carol, "carol", "c")):
            await client.join_ok(topic, with_key(key))
            await track(client, topic, {"name": key, "node": node_name})
        # the watcher on C sees every member join, each with the ref its node chose
        joined = await until_seen(watcher, topic, "joins", {"alice", "bob", "carol"})
        # on every node, a new member is told the same complete state, refs included
        states = [await presence_state_on(node, topic) for node in (a, b, c)]
        assert states[0] == states[1] == states[2]
        assert {k: v["metas"] for k, v in states[0].items()} == joined
        assert metas(states[0], "bob") == [{"name": "bob", "node": "b"}]

        # an update on B: one diff, with phx_ref_prev, reaching A and C
        await track(bob, topic, {"name": "bob", "node": "b", "status": "away"})
        for client in (alice, watcher):
            frame = await client.expect(diff_with(topic, joins="bob", leaves="bob"))
            new = frame.payload["joins"]["bob"]["metas"]
            assert len(new) == 1 and new[0]["status"] == "away"
            assert new[0]["phx_ref_prev"] == frame.payload["leaves"]["bob"]["metas"][0]["phx_ref"]
        # an untrack on A and a socket closed on C leave everywhere
        await untrack(alice, topic)
        await carol.close()
        for client in (bob, watcher):
            await until_seen(client, topic, "leaves", {"alice", "carol"})
        state = await presence_state_on(a, topic)
        assert sorted(state) == ["bob"]


async def presence_push_in_order(c: RawClient, topic: str, event: str, key: str, payload: Any = None) -> None:
    """The pushing client sees the ``presence_diff`` its push causes before the push's reply
    (as Phoenix's tracker orders them), even though the op also travels to the other nodes."""
    body: dict[str, Any] = {"type": "presence", "event": event}
    if payload is not None:
        body["payload"] = payload
    ref = await c.push(topic, "presence", body)
    reply = await c.expect(reply_to(ref, topic))
    assert reply.value == c.wire(c.join_refs[topic], ref, topic, "phx_reply", OK_REPLY)
    frame = await c.expect(diff_with(topic, **{"joins" if event == "track" else "leaves": key}))
    assert c.position(frame) < c.position(reply), "the reply overtook the presence_diff it caused"


@pytest.mark.parametrize("vsn", VSNS)
async def test_presence_diff_precedes_the_push_reply_on_a_cluster(cluster: Cluster, vsn: str) -> None:
    a, b, _ = cluster.nodes
    topic = unique_topic("x-order")
    async with open_client(a, vsn) as tracker, open_client(b, vsn) as watcher:
        await watcher.join_ok(topic, PRESENCE_ON)
        await watcher.expect(event_is("presence_state", topic))
        await tracker.join_ok(topic, with_key("t"))
        await tracker.expect(event_is("presence_state", topic))
        await presence_push_in_order(tracker, topic, "track", "t", {"n": 1})
        await presence_push_in_order(tracker, topic, "track", "t", {"n": 2})
        await presence_push_in_order(tracker, topic, "untrack", "t")
        # the other node saw the same three changes, in order (in one diff or more)
        joins: list[dict[str, Any]] = []
        leaves: list[dict[str, Any]] = []
        while not any(m.get("n") == 2 for m in leaves):
            frame = await watcher.expect(lambda f: f.event == "presence_diff" and f.topic == topic)
            joins += frame.payload["joins"].get("t", {}).get("metas", [])
            leaves += frame.payload["leaves"].get("t", {}).get("metas", [])
        assert [m["n"] for m in joins] == [1, 2] and "phx_ref_prev" in joins[1]
        assert [m["n"] for m in leaves] == [1, 2]


async def test_killed_node_members_leave_everywhere_and_do_not_come_back(
        make_cluster: Callable[..., Cluster]) -> None:
    cl = make_cluster(3)
    a, b, c = cl.nodes
    topic = unique_topic("x-death")
    async with AsyncExitStack() as stack:
        doomed = [await stack.enter_async_context(open_client(a, vsn)) for vsn in (V1, V2)]
        wb = await stack.enter_async_context(open_client(b, V2))
        wc = await stack.enter_async_context(open_client(c, V1))
        survivor = await stack.enter_async_context(open_client(b, V1))
        for w in (wb, wc):
            await w.join_ok(topic, PRESENCE_ON)
        for i, client in enumerate(doomed):
            await client.join_ok(topic, with_key(f"on-a-{i}"))
            await track(client, topic, {"i": i})
        await survivor.join_ok(topic, with_key("on-b"))
        await track(survivor, topic, {})
        for w in (wb, wc):
            await until_seen(w, topic, "joins", {"on-a-0", "on-a-1", "on-b"})

        cl.kill_node(a)
        killed_at = time.monotonic()
        for w in (wb, wc):
            left: set[str] = set()
            while left != {"on-a-0", "on-a-1"}:
                remaining = NODE_DEATH_LEAVE_S - (time.monotonic() - killed_at)
                frame = await w.expect(event_is("presence_diff", topic), timeout=max(remaining, 0.01))
                assert frame.payload["joins"] == {}
                left |= set(frame.payload["leaves"])
            assert "on-b" not in left
        elapsed = time.monotonic() - killed_at
        print(f"members of the killed node left on B and C {elapsed:.1f} s after SIGKILL")
        assert elapsed < NODE_DEATH_LEAVE_S

        await wait_until(lambda: all(health(n)["nodes"] == 2 for n in (b, c)), CONVERGE_S, "B and C to count 2 nodes")
        # a process started in A's place is a new node: it never reports A's old members
        a2 = cl.add_node()
        await wait_until(lambda: all(health(n)["nodes"] == 3 for n in (a2, b, c)), CONVERGE_S, "3 nodes again")
        for node in (a2, b, c):
            assert sorted(await presence_state_on(node, topic)) == ["on-b"]
        # and no diff brings them back: a marker tracked on each node reaches the watcher on B
        # with no such diff before it (each node's presence ops are one ordered stream)
        def brings_back(f: Frame) -> bool:
            return diff_with(topic, joins="on-a-0")(f) or diff_with(topic, joins="on-a-1")(f)

        for i, node in enumerate((a2, b, c)):
            marker = await stack.enter_async_context(open_client(node, V2))
            await marker.join_ok(topic, with_key(f"marker-{i}"))
            await track(marker, topic, {})
            await wb.assert_nothing_before(diff_with(topic, joins=f"marker-{i}"), brings_back, CONVERGE_S)
    for node in (a2, b, c):
        assert_no_traceback(node)


# --- Redis faults ---------------------------------------------------------------------------


async def test_redis_restart_under_traffic(make_cluster: Callable[..., Cluster]) -> None:
    cl = make_cluster(2)
    a, b = cl.nodes
    topic = unique_topic("x-outage")
    async with (
        open_client(a, V2) as sender,
        open_client(a, V1) as local,
        open_client(b, V2) as remote,
        open_client(b, V1) as member_b,
    ):
        for client in (sender, local, remote):
            await client.join_ok(topic)
        await member_b.join_ok(topic, with_key("before"))
        await track(member_b, topic, {})

        sent: list[int] = []
        stop = asyncio.Event()

        async def traffic() -> None:  # ~100 messages/s from A for the whole test
            i = 0
            while not stop.is_set():
                await sender.push(topic, "broadcast", {"type": "broadcast", "event": "t", "payload": {"i": i}})
                sent.append(i)
                i += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.01)

        pump = asyncio.create_task(traffic())
        try:
            await remote.expect(is_broadcast)  # traffic flows across nodes
            cl.redis.kill()
            await wait_until(lambda: all(health(n)["status"] == "degraded" for n in (a, b)), 10,
                             "both nodes to report degraded")
            h = health(a)
            assert h["pubsub"] == "degraded"
            # local delivery keeps working on A: a message sent now reaches A's own subscriber
            mark = len(sent)
            await wait_async(lambda: _has_at_least(local, mark), 5, "local delivery during the outage")
            # presence changes during the outage are local for now...
            async with open_client(b, V2) as member_b2:
                await member_b2.join_ok(topic, with_key("during"))
                await track(member_b2, topic, {})
                cl.redis.start()  # same port
                await wait_until(lambda: all(health(n)["status"] == "ok" for n in (a, b)), RECOVER_S,
                                 "both nodes to report ok again")
                # ...and every node converges once the backbone is back (resync)
                async def converged() -> bool | None:
                    state = await presence_state_on(a, topic)
                    return sorted(state) == ["before", "during"] or None
                ok_at = time.monotonic()
                await wait_async(converged, CONVERGE_S, "A to list B's members after the outage")
                print(f"presence converged {time.monotonic() - ok_at:.2f} s after both nodes reported ok")
                # delivery across nodes resumes: a message sent after recovery reaches B in order
                resumed_from = len(sent)
                await wait_async(lambda: _has_at_least(remote, resumed_from), 10, "cross-node delivery to resume")
        finally:
            stop.set()
            await pump
        for r in (local, remote):
            got = [data_of(f)["i"] for f in r.received if f.event == "broadcast"]
            assert got == sorted(got), "per-sender order broken around the outage"
        for node in (a, b):
            assert node.proc.poll() is None
            assert_no_traceback(node)
        assert "DEGRADED" in a.log() and "CONNECTED" in a.log()


async def _has_at_least(client: RawClient, i: int) -> bool | None:
    """Whether a broadcast numbered ``i`` or later has reached ``client``."""
    return any(f.event == "broadcast" and data_of(f)["i"] >= i for f in client.received) or None


# --- --workers (cli.py) ---------------------------------------------------------------------


def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "realtime_channels", "serve", *args]


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update({"REALTIME_JWT_SECRET": TEST_SECRET, "REALTIME_JOIN_ERROR_BACKOFF_MS": "0",
                "REALTIME_CONNECT_ERROR_BACKOFF_MS": "0"})
    return env


def test_workers_without_redis_are_refused() -> None:
    proc = subprocess.run(_serve_cmd("--workers", "2", "--port", str(free_port())), env=_base_env(),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "--workers 2 needs REALTIME_REDIS_URL (or --redis-url)" in proc.stderr


def _two_workers(redis_url: str, tmp_path: Any, env: dict[str, str]) -> ServerProc:
    """``serve --workers 2`` on a free port, in a session of its own, logging to tmp_path."""
    port = free_port()
    log_path = tmp_path / "workers.log"
    with open(log_path, "wb") as log:
        sup = subprocess.Popen(_serve_cmd("--workers", "2", "--port", str(port), "--redis-url", redis_url),
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return ServerProc(port=port, proc=sup, log_path=str(log_path))


def _node_seed(ref: str) -> bytes:
    """phx_refs are base64url(6 per-node random bytes + counter) (presence.RefGenerator)."""
    return base64.urlsafe_b64decode(ref + "=" * (-len(ref) % 4))[:6]


async def test_workers_share_one_port_through_redis(make_cluster: Callable[..., Cluster], tmp_path: Any) -> None:
    server = _two_workers(make_cluster(0).redis.url, tmp_path, _base_env())
    sup = server.proc
    try:
        def two_nodes() -> bool:
            return bool(health(server)["nodes"] == 2)
        await wait_until(two_nodes, 30, "the two workers to see each other")
        topic = unique_topic("x-workers")
        async with AsyncExitStack() as stack:
            # connections are spread by the kernel: open some until two workers hold members
            clients: list[RawClient] = []
            seeds: dict[bytes, RawClient] = {}
            watcher = await stack.enter_async_context(open_client(server, V1))
            await watcher.join_ok(topic, PRESENCE_ON)
            for i in range(24):
                c = await stack.enter_async_context(open_client(server, V2))
                await c.join_ok(topic, with_key(f"m{i}"))
                await track(c, topic, {})
                clients.append(c)
                frame = await watcher.expect(diff_with(topic, joins=f"m{i}"))
                seeds.setdefault(_node_seed(frame.payload["joins"][f"m{i}"]["metas"][0]["phx_ref"]), c)
                if len(seeds) == 2:
                    break
            assert len(seeds) == 2, "24 connections all landed on one worker"
            x, y = seeds.values()
            await x.push(topic, "broadcast", {"type": "broadcast", "event": "hi", "payload": {"from": "x"}})
            await y.push(topic, "broadcast", {"type": "broadcast", "event": "hi", "payload": {"from": "y"}})
            assert data_of(await y.expect(is_broadcast)) == {"from": "x"}
            assert data_of(await x.expect(is_broadcast)) == {"from": "y"}
            # every member is listed whichever worker answers
            state = await presence_state_on(server, topic)
            assert sorted(state) == sorted(f"m{i}" for i in range(len(clients)))
    finally:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait(5)
    assert sup.returncode == 0
    assert "Traceback" not in server.log(), server.log()[-4000:]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


async def test_workers_stop_when_their_supervisor_is_killed(make_cluster: Callable[..., Cluster], tmp_path: Any) -> None:
    server = _two_workers(make_cluster(0).redis.url, tmp_path, {**_base_env(), "REALTIME_LOG_LEVEL": "info"})
    sup = server.proc
    try:
        def pids() -> list[int] | None:
            m = re.search(r"started 2 workers on \S+: pids (\d+) (\d+)", server.log())
            return [int(m.group(1)), int(m.group(2))] if m else None
        workers = await wait_until(pids, 30, "the supervisor to start its workers")
        await wait_until(lambda: health(server)["nodes"] == 2 or None, 30, "the two workers to serve")
        sup.kill()  # no chance to stop its workers itself
        sup.wait(5)
        await wait_until(lambda: not any(_alive(p) for p in workers) or None, 30,
                         "the orphaned workers to stop")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sup.pid, signal.SIGKILL)
    assert server.log().count("shutting down") == 2  # each stopped as on SIGTERM
    assert "Traceback" not in server.log(), server.log()[-4000:]


# --- cluster-wide tenant limits (§8) --------------------------------------------------------


async def _handshake_refused(node: ServerProc) -> tuple[int, Any] | None:
    """Try to connect (without joining, so no user is added); the refusal if refused."""
    url = f"{node.ws_url}/socket/websocket?apikey={node.anon_key}&vsn={V2}"
    try:
        ws = await connect(url, open_timeout=5)
    except InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body or b"null")
    await ws.close()
    return None


@asynccontextmanager
async def _user(node: ServerProc, topic: str) -> AsyncIterator[RawClient]:
    async with open_client(node, V2) as c:
        await c.join_ok(topic)
        yield c


async def test_concurrent_users_limit_is_cluster_wide(make_cluster: Callable[..., Cluster]) -> None:
    cl = make_cluster(2, REALTIME_MAX_CONCURRENT_USERS="2")
    a, b = cl.nodes
    topic = unique_topic("x-limit")
    async with _user(a, topic):
        async with _user(b, topic):
            # each node holds one user; once B's heartbeat reached A, A is full (and vice versa)
            for node in (a, b):
                refusal = await wait_async(lambda n=node: _handshake_refused(n), CONVERGE_S,
                                           f"node {node.port} to count the other node's user")
                assert refusal == (429, {"error": "Too many connected users"})
        # B's user left: after the next heartbeat a new user on A is accepted again
        async def accepted() -> bool | None:
            return (await _handshake_refused(a)) is None or None
        await wait_async(accepted, CONVERGE_S, "A to count B's user gone")
        async with _user(a, topic) as third:
            assert third.join_refs[topic] is not None
