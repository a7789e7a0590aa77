"""``GET /api/trace``: each broadcast on a topic with who it was written to and who was skipped,
and why; pushes refused (not joined, a rate limit); the service role only (docs/explain.md)."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from rawclient import V1, V2, open_client, unique_topic
from support import make_token
from tracepeer import trace


async def test_a_broadcast_is_traced_with_its_receivers_and_the_sender_skipped_for_self_false(server: Any) -> None:
    topic = unique_topic("traced")
    sub_topic = topic.removeprefix("realtime:")
    async with trace(server.http_url, sub_topic, server.service_key) as t, \
            open_client(server, V2) as sender, open_client(server, V2) as receiver, open_client(server, V1) as old:
        await sender.join_ok(topic, {"broadcast": {"self": False}})
        await receiver.join_ok(topic, {})
        await old.join_ok(topic, {})
        await sender.broadcast(topic, "move", {"x": 1})
        event = await t.next("broadcast")
        assert (event["topic"], event["event"], event["private"]) == (sub_topic, "move", False)
        assert len(event["written"]) == 2 and event["bytes"] > 0
        assert [s["why"] for s in event["skipped"]] == ["self: false (the sender's own channel)"]
        assert "payload" not in event and "x" not in str(event)
        await receiver.expect(lambda f: f.event == "broadcast")
        # a binary payload cannot reach the vsn 1.0.0 socket
        await sender.send_kind3(topic, "blob", b"\x00\x01", 0)  # encoding 0: binary
        event = await t.next("broadcast")
        assert sorted(s["why"] for s in event["skipped"]) == [
            "binary payload to a vsn 1.0.0 socket", "self: false (the sender's own channel)"]


async def test_a_push_to_a_topic_not_joined_is_traced_as_refused(server: Any) -> None:
    topic = unique_topic("unjoined")
    async with trace(server.http_url, topic.removeprefix("realtime:"), server.service_key) as t, \
            open_client(server, V2) as c:
        await c.broadcast(topic, "e", {})
        event = await t.next("refused")
        assert event["why"] == "not joined (unmatched topic)"


async def test_a_rate_limited_sender_is_traced_with_the_limit(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_EVENTS_PER_SECOND="2")
    topic = unique_topic("flood")
    async with trace(srv.http_url, topic.removeprefix("realtime:"), srv.service_key) as t, \
            open_client(srv, V2) as c:
        await c.join_ok(topic, {})
        for i in range(20):
            await c.broadcast(topic, "e", {"i": i})
        event = await t.next("refused")
        assert event["why"].startswith("Too many messages per second")


def test_tracing_needs_the_service_role(server: Any) -> None:
    for key, status in ((server.anon_key, 403), (make_token("authenticated", sub="u"), 403), ("bad", 401)):
        req = urllib.request.Request(f"{server.http_url}/api/trace?topic=x", headers={"apikey": key})
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("tracing was allowed")
        except urllib.error.HTTPError as e:
            assert e.code == status, (key, e.code)
