"""A reader of ``GET /api/trace`` (server-sent events) for tests: events arrive on a queue; the
first, ``ready``, says the watch is registered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp


class Trace:
    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def next(self, kind: str | None = None, timeout: float = 15.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                got, data = await self.events.get()
                if kind is None or got == kind:
                    return data


@asynccontextmanager
async def trace(http_url: str, topic: str, key: str) -> AsyncIterator[Trace]:
    out = Trace()
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{http_url}/api/trace", params={"topic": topic}, headers={"apikey": key},
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        assert resp.status == 200, await resp.text()

        async def read() -> None:
            kind = "message"
            while line := await resp.content.readline():
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    kind = text[7:]
                elif text.startswith("data: "):
                    out.events.put_nowait((kind, json.loads(text[6:])))

        reader = asyncio.create_task(read())
        try:
            await out.next("ready")
            yield out
        finally:
            reader.cancel()
            resp.close()
