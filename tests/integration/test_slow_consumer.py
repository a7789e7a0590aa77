"""Slow consumers (design.md habit 5): a subscriber that stops reading is disconnected
with close code 1008 "slow consumer" once its unsent bytes exceed REALTIME_OUTBOX_MAX_BYTES, and
the other subscribers of the room keep receiving every message, in order.

The slow consumer here is a bare socket with a tiny receive buffer: it completes the WebSocket
handshake and the join by hand (RFC 6455 §4.1, §5.2) and then never calls recv() until the flood
is over, so the server's kernel send buffer fills and its outbox grows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from rawclient import V1, V2, VSNS, open_client, unique_topic

from support import ServerProc

OUTBOX = 65536
#: Far more than the slow socket's kernel buffers can hold (its receive buffer is pinned to a
#: few KB; the server's send buffer autotunes to at most net.ipv4.tcp_wmem's max, 4 MiB by
#: default) plus the 64 KiB outbox, so the outbox must overflow.
FLOOD_MESSAGES = 1000
PAD = "x" * 8000
DRAIN_TIMEOUT = 20.0


def masked_text_frame(text: str) -> bytes:
    """A client→server text frame (RFC 6455 §5.2: clients must mask)."""
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    else:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@dataclass
class Parsed:
    texts: list[str] = field(default_factory=list)
    close: tuple[int, str] | None = None
    rest: bytes = b""


def parse_frames(buf: bytes) -> Parsed:
    """Split server→client (unmasked) frames; an incomplete trailing frame stays in ``rest``."""
    out = Parsed()
    i = 0
    while len(buf) - i >= 2:
        opcode, n, j = buf[i] & 0x0F, buf[i + 1] & 0x7F, i + 2
        if n == 126:
            if len(buf) - j < 2:
                break
            n, j = int.from_bytes(buf[j : j + 2], "big"), j + 2
        elif n == 127:
            if len(buf) - j < 8:
                break
            n, j = int.from_bytes(buf[j : j + 8], "big"), j + 8
        if len(buf) - j < n:
            break
        body = buf[j : j + n]
        if opcode == 0x1:
            out.texts.append(body.decode())
        elif opcode == 0x8:
            out.close = (int.from_bytes(body[:2], "big"), body[2:].decode())
        i = j + n
    out.rest = buf[i:]
    return out


class SilentSubscriber:
    """Joins a topic over a hand-made WebSocket, then reads nothing until ``drain``."""

    def __init__(self, sock: socket.socket, vsn: str) -> None:
        self.sock = sock
        self.vsn = vsn
        self.pending = b""

    @classmethod
    async def join(cls, server: ServerProc, topic: str, vsn: str) -> SilentSubscriber:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # a small receive buffer, set before connect so the window stays small (tcp(7))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /socket/websocket?apikey={server.anon_key}&vsn={vsn} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        self = cls(sock, vsn)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            assert chunk, "server closed during the handshake"
            head += chunk
        status, _, self.pending = head.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101"), status
        if vsn == V2:
            join = json.dumps(["1", "1", topic, "phx_join", {"config": {}}])
        else:
            join = json.dumps({"topic": topic, "event": "phx_join", "payload": {"config": {}}, "ref": "1", "join_ref": "1"})
        await loop.sock_sendall(sock, masked_text_frame(join))
        while True:
            parsed = parse_frames(self.pending)
            replies = [json.loads(t) for t in parsed.texts]
            if any(self._is_join_ok(r) for r in replies):
                self.pending = parsed.rest  # nothing else is sent to it before the flood
                return self
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            assert chunk, "server closed before the join reply"
            self.pending += chunk

    def _is_join_ok(self, msg: object) -> bool:
        if self.vsn == V2:
            return isinstance(msg, list) and msg[1] == "1" and msg[3] == "phx_reply" and msg[4]["status"] == "ok"
        return isinstance(msg, dict) and msg.get("ref") == "1" and msg["payload"]["status"] == "ok"

    async def drain(self, timeout: float) -> tuple[bytes, str]:
        """Read until the server ends the connection; returns (bytes, "eof" | "reset")."""
        loop = asyncio.get_running_loop()
        data = bytearray(self.pending)
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"slow consumer still connected after reading {len(data)} bytes")
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), remaining)
            except ConnectionResetError:
                return bytes(data), "reset"
            except TimeoutError:
                raise AssertionError(f"slow consumer still connected after reading {len(data)} bytes") from None
            if not chunk:
                return bytes(data), "eof"
            data += chunk

    def close(self) -> None:
        self.sock.close()


def seq_of(view: object) -> int:
    assert isinstance(view, dict) and view["event"] == "flood", view
    payload = view["payload"]
    assert isinstance(payload, dict)
    return int(payload["seq"])


@pytest.mark.parametrize("vsn", VSNS)
async def test_slow_consumer_is_disconnected_and_others_get_everything_in_order(
    server_factory: Callable[..., ServerProc], vsn: str
) -> None:
    srv = server_factory(REALTIME_OUTBOX_MAX_BYTES=str(OUTBOX))
    topic = unique_topic("slow")
    slow = await SilentSubscriber.join(srv, topic, vsn)
    try:
        async with open_client(srv, vsn) as reader, open_client(srv, vsn) as publisher:
            await reader.join_ok(topic)
            await publisher.join_ok(topic)
            # Paced by the healthy reader (each message is published once the previous one
            # arrived): with a 64 KiB outbox a burst would overflow a reader that is merely busy.
            # The reader gets every message, in publish order, while one member stalls.  The
            # flood stops early once the server reports the drop, so the stalled member starts
            # reading well within the server's 1 s grace and sees the close frame.
            sent = 0
            while sent < FLOOD_MESSAGES and "slow consumer" not in srv.log():
                await publisher.broadcast(topic, "flood", {"seq": sent, "pad": PAD})
                frame = await reader.expect(lambda f: f.event == "broadcast", timeout=10)
                assert seq_of(frame.broadcast_view()) == sent
                sent += 1

            # the stalled member was cut off by the server: what it gets is a gap-free prefix of
            # the flood, then close 1008 "slow consumer", then the end of the TCP stream
            data, ending = await slow.drain(DRAIN_TIMEOUT)
            parsed = parse_frames(data)
            got = [seq_of(json.loads(t)[4] if vsn == V2 else json.loads(t)["payload"]) for t in parsed.texts]
            assert ending in ("eof", "reset")
            assert got == list(range(len(got))) and len(got) <= sent
            assert parsed.close == (1008, "slow consumer")

            # the server and the healthy sockets carry on
            await reader.heartbeat()
            await publisher.broadcast(topic, "flood", {"seq": FLOOD_MESSAGES, "pad": ""})
            frame = await reader.expect(lambda f: f.event == "broadcast")
            assert seq_of(frame.broadcast_view()) == FLOOD_MESSAGES
    finally:
        slow.close()

