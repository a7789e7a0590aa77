"""``GET /api/presence/{topic}/count``: the members of a topic, counted without its state
(docs/protocol.md §5.8), for public topics with any valid key."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from rawclient import V2, open_client, reply_to, unique_topic
from support import make_token, wait_until


def count(server: Any, topic: str, key: str | None = None, private: str = "false") -> tuple[int, Any]:
    req = urllib.request.Request(f"{server.http_url}/api/presence/{topic}/count?private={private}",
                                 headers={"apikey": key or server.anon_key})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


async def test_members_are_counted_by_key_and_by_meta(server: Any) -> None:
    topic = unique_topic("count")
    sub = topic.removeprefix("realtime:")
    assert count(server, sub) == (200, {"topic": sub, "private": False, "keys": 0, "metas": 0})
    async with open_client(server, V2) as a, open_client(server, V2) as b, open_client(server, V2) as c:
        for client, key in ((a, "alice"), (b, "bob"), (c, "bob")):  # bob on two sockets
            await client.join_ok(topic, {"presence": {"key": key}})
            ref = await client.push(topic, "presence", {"type": "presence", "event": "track", "payload": {}})
            assert (await client.expect(reply_to(ref, topic))).payload["status"] == "ok"
        assert count(server, sub)[1] == {"topic": sub, "private": False, "keys": 2, "metas": 3}
    # the sockets closed: their members leave
    await wait_until(lambda: count(server, sub)[1]["metas"] == 0, 10, "the members to leave")
    assert count(server, sub)[1]["keys"] == 0
    assert count(server, sub, key="bad")[0] == 401
    assert count(server, sub, private="maybe")[0] == 422
    # without a database no policy can grant presence-read on a private topic: refused, unless service role
    assert count(server, sub, private="true")[0] == 403
    assert count(server, sub, key=make_token("service_role", secret=server.secret), private="true")[0] == 200
