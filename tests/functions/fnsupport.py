"""Helpers for the functions engine tests: a real HTTP function server, a publish recorder,
config files and condition waits (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

HERE = Path(__file__).resolve().parent

#: Standard Webhooks secret of the tests: "whsec_" + base64(key)
KEY = b"functions-test-signing-key-0123456789"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` on the event loop until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def settle(rounds: int = 200) -> None:
    """Let every ready task run a bounded number of times (no wall-clock waiting)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def write_config(tmp_path: Path, body: str, *, defaults: str = "") -> str:
    """A config file whose Python targets resolve from tests/functions."""
    path = tmp_path / "functions.toml"
    path.write_text(f'python_path = ["{HERE}"]\n{defaults}\n{body}', encoding="utf-8")
    return str(path)


@dataclass
class Published:
    items: list[tuple[str, str, Any]] = field(default_factory=list)

    def __call__(self, topic: str, event: str, payload: Any) -> None:
        self.items.append((topic, event, payload))


@dataclass
class Received:
    """One request the HTTP function accepted (signature already checked)."""

    path: str
    headers: dict[str, str]
    event: dict[str, Any]
    signature_ok: bool


Behaviour = Callable[[web.Request, dict[str, Any], int], Awaitable[web.StreamResponse]]


def verify_signature(headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks, re-implemented here independently of the engine's signing module."""
    msg_id, ts, sigs = headers.get("webhook-id"), headers.get("webhook-timestamp"), headers.get("webhook-signature")
    if not (msg_id and ts and sigs):
        return False
    if abs(time.time() - int(ts)) > 300:
        return False
    mac = hmac.new(KEY, msg_id.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, s) for s in sigs.split(" "))


class FnServer:
    """An aiohttp HTTP function on a free port; each path has a behaviour set by the test.

    A behaviour gets (request, event, attempt) where attempt counts requests with that
    ``webhook-id`` (1 for the first), and returns the response.
    """

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.received: list[Received] = []
        self.attempts: dict[str, int] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, behaviour: Behaviour) -> str:
        self.behaviours[path] = behaviour
        return self.url(path)

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        return [r.event for r in self.received if path is None or r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        event = orjson.loads(body)
        ok = verify_signature(headers, body)
        msg_id = headers.get("webhook-id", "")
        self.attempts[msg_id] = self.attempts.get(msg_id, 0) + 1
        self.received.append(Received(request.path, headers, event, ok))
        if not ok:
            return web.json_response({"error": "bad signature"}, status=401)
        behaviour = self.behaviours.get(request.path)
        if behaviour is None:
            return web.Response(status=404)
        return await behaviour(request, event, self.attempts[msg_id])

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
