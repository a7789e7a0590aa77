"""Inbound protections (server.read_loop): a refused join-rate offender is closed with 1001 even
while it keeps sending, and a socket over REALTIME_MAX_CLIENT_FRAMES_PER_SECOND is read more
slowly — nothing it sent is lost and other sockets are served in between."""

from __future__ import annotations

import json
from typing import Any

from rawclient import V2, open_client, unique_topic


async def test_join_rate_refusal_closes_1001_while_the_client_keeps_sending(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_JOINS_PER_SECOND="1")
    async with open_client(srv, V2) as c:
        for i in range(50):  # keep joining (and heartbeating) without waiting for answers
            await c.send_text(json.dumps([str(i), str(i), unique_topic(), "phx_join", {"config": {}}]))
            await c.send_text(json.dumps([None, f"hb{i}", "phoenix", "heartbeat", {}]))
        assert await c.wait_closed(10) == 1001


async def test_flooding_socket_is_paced_without_losing_frames_and_others_are_served(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_CLIENT_FRAMES_PER_SECOND="200")
    n = 600  # three seconds' worth of budget: the flood cannot be answered at once
    async with open_client(srv, V2) as flooder, open_client(srv, V2) as other:
        for i in range(n):
            await flooder.send_text(json.dumps([None, str(i), "phoenix", "heartbeat", {}]))
        other_reply = await other.heartbeat("other")  # answered while the flood is being paced
        received_before_other = len(flooder._buffer)  # noqa: SLF001 - frames already read
        refs = [(await flooder.next_frame(timeout=30)).ref for _ in range(n)]
        assert refs == [str(i) for i in range(n)]  # every frame answered, in order
        assert other_reply.payload == {"status": "ok", "response": {}}
        assert received_before_other < n, "the other socket waited for the whole flood"
