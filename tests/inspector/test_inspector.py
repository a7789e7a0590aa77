"""The inspector page (/inspector) in a real headless Chromium, used as a person would: keys
typed or passed in a link, channels joined, broadcasts seen and sent, and the live charts fed by
``GET /api/inspector/stats``.  The other side of every exchange is supabase-js (the Node peer).
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parents[1]
for _helpers in ("integration", "conformance"):  # rawclient.py, peers.py (plain modules)
    if str(TESTS_DIR / _helpers) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR / _helpers))

from inspector_browser import inspector_url, log_entry, page  # noqa: E402, F401 - page is a fixture
from peers import NodePeer, node, unique_topic  # noqa: E402, F401 - node is a fixture
from playwright.async_api import Page, expect  # noqa: E402
from rawclient import V2, open_client  # noqa: E402
from support import make_token, wait_until  # noqa: E402


def compact(value: Any) -> str:
    """A payload as the page prints it (``JSON.stringify``)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def get_stats(server: Any, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(f"{server.http_url}/api/inspector/stats", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_without_a_key_the_page_asks_for_one_then_joins(server: Any, page: Page) -> None:
    topic = unique_topic("insp-typed")
    await page.goto(inspector_url(server))
    prompt = page.get_by_test_id("key-prompt")
    await expect(prompt).to_be_visible()
    await expect(prompt).to_contain_text("Enter an API key to connect")
    await expect(page.get_by_test_id("socket-status")).to_have_text("disconnected")
    await expect(page.get_by_test_id("apikey")).to_be_focused()

    await page.get_by_test_id("apikey").fill(server.anon_key)
    await page.get_by_test_id("topic").fill(topic)
    await page.get_by_test_id("join").click()

    await expect(page.get_by_test_id("join-status")).to_have_text(f"joined {topic}")
    await expect(page.get_by_test_id("socket-status")).to_have_text("connected")
    await expect(prompt).to_be_hidden()
    # presence is on by default: the (empty) state arrives after the join
    await expect(log_entry(page, "presence_state")).to_have_count(1)
    await expect(log_entry(page, "reply", "phx_join ok")).to_have_count(1)

    await page.get_by_test_id("leave").click()
    await expect(page.get_by_test_id("join-status")).to_have_text(f"left {topic}")
    await expect(log_entry(page, "reply", "phx_leave ok")).to_have_count(1)


async def test_a_key_the_server_refuses_is_named(server: Any, page: Page) -> None:
    await page.goto(inspector_url(server))
    await page.get_by_test_id("apikey").fill(make_token(secret="another-secret-of-at-least-32-characters"))
    await page.get_by_test_id("connect").click()
    await expect(page.get_by_test_id("socket-status")).to_have_text(
        "not connected: the server did not accept this API key")


async def test_the_user_token_of_a_link_authorizes_the_join(server: Any, page: Page) -> None:
    topic = unique_topic("insp-token")
    expired = make_token("authenticated", exp_in=-120)
    await page.goto(inspector_url(server, topic=topic, apikey=server.anon_key, token=expired))
    await expect(page.get_by_test_id("token")).to_have_value(expired)
    await expect(page.get_by_test_id("join-status")).to_have_text("refused")
    await expect(page.get_by_test_id("join-error")).to_have_text(
        re.compile(r"^InvalidJWTToken: Token has expired \d+ seconds ago$"))
    await expect(page.get_by_test_id("join-why")).to_be_visible()

    # the same channel with the key alone joins
    await page.get_by_test_id("token").fill("")
    await page.get_by_test_id("join").click()
    await expect(page.get_by_test_id("join-status")).to_have_text(f"joined {topic}")
    await expect(page.get_by_test_id("join-error")).to_be_hidden()
    await expect(page.get_by_test_id("join-why")).to_be_hidden()


async def test_deep_link_joins_on_load_and_shows_a_supabase_js_broadcast(
        server: Any, page: Page, node: NodePeer) -> None:
    topic = unique_topic("insp-link")
    await page.goto(inspector_url(server, topic=topic, private="false", apikey=server.anon_key))
    await expect(page.get_by_test_id("join-status")).to_have_text(f"joined {topic}")
    await expect(page.get_by_test_id("topic")).to_have_value(topic)

    await node.add_client("a", server)
    await node.subscribe("a", "tx", topic)
    payload = {"hello": "from supabase-js", "n": 7, "nested": {"ok": True}}
    assert await node.call("send", ch="tx", event="greeting", payload=payload) == "ok"

    entry = log_entry(page, "broadcast", "greeting")
    await expect(entry).to_have_count(1)
    await expect(entry.get_by_test_id("log-payload")).to_have_text(compact(payload))
    # newest on top: the broadcast came after the join's reply
    await expect(page.get_by_test_id("log-entry").first).to_have_attribute("data-kind", "broadcast")


async def test_a_broadcast_typed_in_the_page_reaches_supabase_js(server: Any, page: Page, node: NodePeer) -> None:
    topic = unique_topic("insp-send")
    await node.add_client("b", server)
    await node.subscribe("b", "rx", topic)
    await page.goto(inspector_url(server, topic=topic, apikey=server.anon_key))
    await expect(page.get_by_test_id("join-status")).to_have_text(f"joined {topic}")

    await page.get_by_test_id("send-event").fill("from-page")
    await page.get_by_test_id("send-payload").fill('{"typed": true, "n": 3, "text": "héllo"}')
    await page.get_by_test_id("send").click()

    got = await node.wait_broadcast("rx", "from-page")
    assert got["payload"] == {"typed": True, "n": 3, "text": "héllo"}
    await expect(log_entry(page, "sent", "from-page")).to_have_count(1)
    # the page joins with broadcast.self: it sees its own message come back
    await expect(log_entry(page, "broadcast", "from-page").get_by_test_id("log-payload")).to_have_text(
        compact({"typed": True, "n": 3, "text": "héllo"}))

    await page.get_by_test_id("send-payload").fill("{not json")
    await page.get_by_test_id("send").click()
    await expect(page.get_by_test_id("send-error")).to_contain_text("the payload is not valid JSON")


async def test_presence_tracked_in_the_page_is_seen_by_supabase_js(server: Any, page: Page, node: NodePeer) -> None:
    topic = unique_topic("insp-presence")
    await node.add_client("c", server)
    await node.subscribe("c", "watch", topic, presence=True)
    await page.goto(inspector_url(server, topic=topic, apikey=server.anon_key))
    await expect(page.get_by_test_id("join-status")).to_have_text(f"joined {topic}")

    await page.get_by_test_id("presence-payload").fill('{"user": "page-user"}')
    await page.get_by_test_id("track").click()

    await node.log.wait_for(
        lambda e: e["type"] == "presence" and e["ch"] == "watch" and e["kind"] == "join"
        and any(m.get("user") == "page-user" for m in e.get("presences", [])),
        what="the page's presence at supabase-js")
    await expect(page.get_by_test_id("presence-state")).to_contain_text('"user": "page-user"')
    await expect(log_entry(page, "reply", "presence track ok")).to_have_count(1)


async def test_charts_render_from_the_stats_endpoint(server: Any, page: Page) -> None:
    topic = unique_topic("insp-charts")
    await page.goto(inspector_url(server, topic=topic, apikey=server.anon_key))
    await expect(page.get_by_test_id("join-status")).to_have_text(f"joined {topic}")

    # the page's own socket is open, so the server counts at least one connection
    await expect(page.get_by_test_id("stat-connections")).to_have_text(re.compile(r"^connections: [1-9]\d*$"))
    # rates need two samples: the second poll has arrived once joins/s shows a number
    await expect(page.get_by_test_id("stat-joins")).to_have_text(re.compile(r"^joins/s: \d+(\.\d+)?$"))
    await expect(page.get_by_test_id("stat-messages")).to_have_text(re.compile(r"^messages/s: \d+(\.\d+)?$"))
    await expect(page.get_by_test_id("stat-lag")).to_have_text("replication lag: n/a")  # no database
    for chart in ("connections", "joins", "messages", "lag"):
        canvas = page.get_by_test_id(f"chart-{chart}")
        await expect(canvas).to_be_visible()
        await expect(canvas).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    # the connections chart drew its line: pixels in the line's blue, not only the grey grid
    drawn = await page.get_by_test_id("chart-connections").evaluate(
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0;
                  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i + 2] > d[i] + 60) n++;
                  return n; }""")
    assert drawn > 0


def test_stats_need_a_key_the_server_accepts(server: Any) -> None:
    status, _ = get_stats(server, {})
    assert status == 401
    status, _ = get_stats(server, {"apikey": make_token(secret="another-secret-of-at-least-32-characters")})
    assert status == 401

    status, body = get_stats(server, {"apikey": server.anon_key})
    assert status == 200
    assert set(body) == {"connections", "joins", "messages", "replication", "replication_lag_bytes", "node", "time"}
    assert isinstance(body["connections"], int) and isinstance(body["joins"], int)
    assert isinstance(body["messages"], int)
    assert body["replication"] is None and body["replication_lag_bytes"] is None
    status, _ = get_stats(server, {"authorization": f"Bearer {server.service_key}"})
    assert status == 200


async def test_stats_count_every_join_and_message(server: Any) -> None:
    key = {"apikey": server.anon_key}
    _, before = get_stats(server, key)
    async with open_client(server, V2) as c:
        topic = "realtime:" + unique_topic("insp-count")
        await c.join_ok(topic)  # counted before the reply is written
        _, joined = get_stats(server, key)
        assert joined["joins"] >= before["joins"] + 1
        assert joined["connections"] >= 1
        await c.broadcast(topic, "tick", {"n": 1})
        await wait_until(lambda: get_stats(server, key)[1]["messages"] > joined["messages"] or None, 5,
                         "the broadcast to be counted")
