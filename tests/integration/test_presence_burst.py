"""``REALTIME_PRESENCE_OVER_LIMIT=coalesce`` (protocol.md §5.7): presence pushes over the
per-channel window are answered ok and the latest of them is applied when the window opens —
a burst ends at its latest state and the channel stays open (Supabase's default, kept unless
asked otherwise, shuts it down: test_presence_raw.py)."""

from __future__ import annotations

from typing import Any

from rawclient import V2, event_is, open_client, reply_to, unique_topic


async def test_a_burst_over_the_window_ends_at_its_latest_state(server_factory: Any) -> None:
    srv = server_factory(REALTIME_PRESENCE_OVER_LIMIT="coalesce", REALTIME_MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW="2",
                         REALTIME_CLIENT_PRESENCE_WINDOW_MS="1000")
    topic = unique_topic("burst")
    async with open_client(srv, V2) as a, open_client(srv, V2) as watcher:
        await watcher.join_ok(topic, {"presence": {"enabled": True}})
        await watcher.expect(event_is("presence_state", topic))
        await a.join_ok(topic, {"presence": {"key": "busy"}})
        for i in range(6):
            ref = await a.push(topic, "presence", {"type": "presence", "event": "track", "payload": {"i": i}})
            assert (await a.expect(reply_to(ref, topic))).payload["status"] == "ok"
        # the first two went through; the latest of the other four comes when the window opens
        latest: list[int] = []
        while 5 not in latest:
            d = await watcher.expect(event_is("presence_diff", topic), 10)
            latest += [m["i"] for m in d.payload["joins"].get("busy", {}).get("metas", [])]
        assert latest == [0, 1, 5], "2, 3 and 4 were replaced by 5 before they took effect"
        # the channel was never shut down: a heartbeat's round trip is the barrier
        await a.heartbeat("hb")
        await a.assert_nothing_pending(event_is("phx_close", topic))
        await a.assert_nothing_pending(lambda f: f.event == "system" and f.payload.get("status") == "error")
