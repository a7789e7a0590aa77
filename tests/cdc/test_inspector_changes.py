"""The inspector page (/inspector) against a server streaming from a real PostgreSQL, in a real
headless Chromium: database changes arrive on screen, a private channel without policies is
refused with its reason (and a "why?" that asks the server), and the lag chart has a figure.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR / "inspector") not in sys.path:
    sys.path.insert(0, str(TESTS_DIR / "inspector"))

from inspector_browser import inspector_url, log_entry, page  # noqa: E402, F401 - page is a fixture
from peers import unique_topic  # noqa: E402
from playwright.async_api import Page, expect  # noqa: E402


def explain_answer(server: Any, topic: str, private: bool) -> tuple[int, str]:
    """What the page's "why?" asks: ``GET /api/explain/join`` with the join's token."""
    query = urllib.parse.urlencode({"topic": topic, "private": str(private).lower()})
    req = urllib.request.Request(f"{server.http_url}/api/explain/join?{query}",
                                 headers={"Authorization": f"Bearer {server.anon_key}", "apikey": server.anon_key})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_a_row_inserted_appears_on_screen(cdc: Any, page: Page) -> None:
    table = cdc.table("id int primary key, title text, done bool")
    topic = unique_topic("insp-pg")
    server = cdc.server
    await page.goto(inspector_url(server, topic=topic, apikey=server.anon_key, schema="public", table=table,
                                  event="INSERT"))
    await expect(page.get_by_test_id("join-status")).to_have_text(f"joined {topic}")
    # bindings are created after the join reply; the system message says when they are live
    await expect(log_entry(page, "system", "postgres_changes ok").get_by_test_id("log-payload")).to_have_text(
        "Subscribed to PostgreSQL")

    cdc.execute(f"insert into {table} values (1, 'from the database', false)")

    change = log_entry(page, "postgres_changes", f"INSERT public.{table}")
    await expect(change).to_have_count(1)
    await expect(change.get_by_test_id("log-payload")).to_have_text(
        '{"record":{"id":1,"title":"from the database","done":false}}')
    # the stats of a node that reads the slot carry its replication lag
    await expect(page.get_by_test_id("stat-lag")).to_have_text(re.compile(r"^replication lag: \d+ bytes$"))


async def test_a_refused_private_join_shows_the_reason_and_why(cdc: Any, page: Page) -> None:
    topic = unique_topic("insp-private")
    server = cdc.server
    await page.goto(inspector_url(server, topic=topic, private="true", apikey=server.anon_key))

    await expect(page.get_by_test_id("join-status")).to_have_text("refused")
    await expect(page.get_by_test_id("join-error")).to_have_text(
        f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}")
    why = page.get_by_test_id("join-why")
    await expect(why).to_be_visible()

    await why.click()
    explained = page.get_by_test_id("join-explain")
    status, body = explain_answer(server, topic, True)
    if status == 404:
        await expect(explained).to_have_text("explain unavailable")
    else:
        answer = json.loads(body)  # shown pretty-printed; each of its fields is on screen
        assert isinstance(answer, dict), body
        for key in answer:
            await expect(explained).to_contain_text(json.dumps(key) + ":")
