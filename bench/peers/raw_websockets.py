"""The Python ceiling: ``websockets.broadcast()`` on uvloop, rebroadcasting plain frames.

It speaks just enough of the Supabase V1 protocol for bench/loadgen.mjs (protocol.md §1.5):
``phx_join`` gets an ok reply, ``heartbeat`` a reply, and every other text frame is rebroadcast
verbatim to the sender's room with ``websockets.broadcast()`` — one frame encoded once and
written to every other member, which is the least work a Python fan-out can do per delivery.

    python bench/peers/raw_websockets.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[str, set[ServerConnection]] = {}


def reply(topic: str, ref: object, response: object) -> str:
    return json.dumps({"topic": topic, "event": "phx_reply",
                       "payload": {"status": "ok", "response": response}, "ref": ref})


async def handler(ws: ServerConnection) -> None:
    room: set[ServerConnection] | None = None
    try:
        async for frame in ws:
            if not isinstance(frame, str):
                continue
            if room is not None and '"phx_join"' not in frame and '"heartbeat"' not in frame:
                broadcast([c for c in room if c is not ws], frame)  # self:false
                continue
            msg = json.loads(frame)
            if msg.get("event") == "phx_join":
                room = rooms.setdefault(msg["topic"], set())
                room.add(ws)
                await ws.send(reply(msg["topic"], msg.get("ref"), {"postgres_changes": []}))
            elif msg.get("event") == "heartbeat":
                await ws.send(reply("phoenix", msg.get("ref"), {}))
    finally:
        if room is not None:
            room.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
