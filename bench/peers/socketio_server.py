"""python-socketio (the most popular Python realtime peer) on aiohttp + uvloop.

Clients ``emit("join", room)`` (acknowledged) and ``emit("pub", room, data)``; the server
re-emits ``data`` as event ``m`` to everyone else in the room — Socket.IO's own room fan-out,
the way its documentation writes a chat room.

    python bench/peers/socketio_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import socketio
import uvloop
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"], cors_allowed_origins="*")


@sio.event
async def join(sid: str, room: str) -> bool:
    await sio.enter_room(sid, room)
    return True


@sio.event
async def pub(sid: str, room: str, data: Any) -> None:
    await sio.emit("m", data, room=room, skip_sid=sid)


def main(port: int) -> None:
    app = web.Application()
    sio.attach(app)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
