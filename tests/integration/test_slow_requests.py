"""Slow half-sent requests ("slowloris") are closed; WebSockets and real clients are not."""

from __future__ import annotations

import asyncio
from typing import Any

from rawclient import V2, open_client, unique_topic

ATTACKERS = 200


async def half_request(port: int, dribble: asyncio.Event) -> asyncio.StreamReader:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /realtime/v1/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    await writer.drain()

    async def keep_dribbling() -> None:  # a header byte now and then, never the blank line
        while not dribble.is_set() and not writer.is_closing():
            writer.write(b"X")
            try:
                await writer.drain()
            except ConnectionError:
                return
            try:
                await asyncio.wait_for(dribble.wait(), 0.3)
            except TimeoutError:
                pass

    asyncio.get_running_loop().create_task(keep_dribbling())
    return reader


async def test_half_sent_requests_are_closed_and_websockets_stay(server_factory: Any) -> None:
    srv = server_factory(REALTIME_HANDSHAKE_TIMEOUT_MS="1000")
    topic = unique_topic("survivor")
    stop = asyncio.Event()
    async with open_client(srv, V2) as legit:
        await legit.join_ok(topic)
        readers = [await half_request(srv.port, stop) for _ in range(ATTACKERS)]
        try:
            # every half-sent request is closed by the server: EOF, bounded by a deadline
            results = await asyncio.wait_for(asyncio.gather(*(r.read() for r in readers)), 20)
            assert all(data == b"" for data in results)
        finally:
            stop.set()
        # the WebSocket, open for longer than the timeout, was left alone
        await legit.barrier()
        async with open_client(srv, V2) as late:  # and new clients connect
            await late.join_ok(topic)
    assert "sent no complete request" in srv.log()
    assert "descriptor limit" in srv.log()
