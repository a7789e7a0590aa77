"""A small raw WebSocket client for exact-frame integration tests (protocol.md §1.5, §1.6).

It deliberately does NOT use the project's codec: frames are built and parsed here by hand from
the spec, so the integration suite checks the server against the protocol, not against itself.

Received frames are buffered in arrival order. ``expect(pred)`` removes and returns the first
buffered (or next arriving) frame matching ``pred`` and leaves the others buffered, so frames
arriving in an unspecified relative order (protocol.md §3.7 "post-join ordering") are never lost;
``next_frame()`` takes the head of the buffer for ordering assertions.

Absence is never judged by waiting: a fixed window passes on a slow machine without proving
anything. It is proven with a barrier, a round trip that must come back after anything that could
have arrived:

- ``barrier()`` / ``assert_nothing_pending()``: a heartbeat round trip on this socket. The server
  handles one socket's frames in order and writes what each produces before reading the next, so
  the reply follows every frame this socket's earlier frames caused (replies, pushes, closes).
  It also follows a hub fan-out that had already happened on the server when the heartbeat was
  sent, e.g. one another subscriber of the same message has already received. A push parked
  behind an asynchronous check (private-channel rights) is not covered: wait for the reply of
  a later push on the same channel first.
- ``assert_nothing_before(marker)``: for things delivered from elsewhere (another socket, REST,
  the database), the test sends a marker through the same path after the action; the stream is
  ordered, so once the marker is here anything sent before it is here too.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

V1 = "1.0.0"
V2 = "2.0.0"
VSNS = [V1, V2]
WS_PATHS = ["/socket/websocket", "/realtime/v1/websocket", "/websocket"]

#: How long to wait for a frame that must arrive.
DEFAULT_TIMEOUT = 3.0

# Sentinel: "use the server's anon key".
_ANON = object()


def unique_topic(prefix: str = "room") -> str:
    """A fresh full topic, so tests sharing the session server never see each other's traffic."""
    return f"realtime:{prefix}-{uuid.uuid4().hex[:10]}"


def sub_topic(topic: str) -> str:
    assert topic.startswith("realtime:")
    return topic[len("realtime:") :]


# --- binary frames, built by hand from protocol.md §1.6 ------------------------------------


def kind3(
    join_ref: str | None,
    ref: str | None,
    topic: str,
    user_event: str,
    payload: bytes,
    encoding: int,
    metadata: bytes = b"",
) -> bytes:
    """Client→server user broadcast push (kind 3); every length is one byte of UTF-8 bytes."""
    parts = [
        (join_ref or "").encode(),
        (ref or "").encode(),
        topic.encode(),
        user_event.encode(),
        metadata,
    ]
    header = bytes([3, *(len(p) for p in parts), encoding])
    return header + b"".join(parts) + payload


def kind4(topic: str, user_event: str, payload: bytes, encoding: int, metadata: bytes = b"") -> bytes:
    """The exact server→client user broadcast (kind 4) expected for a delivery."""
    parts = [topic.encode(), user_event.encode(), metadata]
    return bytes([4, *(len(p) for p in parts), encoding]) + b"".join(parts) + payload


def _parse_kind4(data: bytes) -> tuple[str, str, bytes, int, bytes]:
    topic_len, event_len, meta_len, encoding = data[1], data[2], data[3], data[4]
    pos = 5
    topic = data[pos : pos + topic_len].decode()
    pos += topic_len
    user_event = data[pos : pos + event_len].decode()
    pos += event_len
    metadata = data[pos : pos + meta_len]
    pos += meta_len
    return topic, user_event, metadata, encoding, data[pos:]


# --- received frames ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One received WebSocket message.

    ``value`` is the decoded JSON of a text frame (list for V2, dict for V1). For a kind-4
    binary frame ``payload`` is the view realtime-js builds from it (§1.6):
    ``{"type":"broadcast","event":<user_event>,"payload":<JSON or bytes>,"meta"?:<metadata>}``.
    """

    raw: str | bytes
    value: Any = None
    join_ref: Any = None
    ref: Any = None
    topic: Any = None
    event: Any = None
    payload: Any = None
    kind: int | None = None  # binary kind byte; None for text frames
    user_event: str | None = None
    encoding: int | None = None
    metadata: bytes = b""
    data: bytes = b""

    @property
    def is_binary(self) -> bool:
        return isinstance(self.raw, bytes)

    def broadcast_view(self) -> Any:
        """What a client sees as the broadcast payload, whether text or kind 4 was used."""
        assert self.event == "broadcast", self
        return self.payload

    @staticmethod
    def parse(raw: str | bytes, vsn: str) -> Frame:
        if isinstance(raw, bytes):
            if raw and raw[0] == 4 and len(raw) >= 5:
                topic, user_event, metadata, encoding, data = _parse_kind4(raw)
                user_payload: Any = json.loads(data) if encoding == 1 else data
                view: dict[str, Any] = {"type": "broadcast", "event": user_event, "payload": user_payload}
                if metadata:
                    view["meta"] = json.loads(metadata)
                return Frame(
                    raw=raw,
                    topic=topic,
                    event="broadcast",
                    payload=view,
                    kind=4,
                    user_event=user_event,
                    encoding=encoding,
                    metadata=metadata,
                    data=data,
                )
            return Frame(raw=raw, kind=raw[0] if raw else -1)
        value = json.loads(raw)
        if vsn == V2:
            if isinstance(value, list) and len(value) == 5:
                jr, ref, topic, event, payload = value
                return Frame(raw, value, jr, ref, topic, event, payload)
            return Frame(raw, value)
        if isinstance(value, dict):
            return Frame(
                raw,
                value,
                value.get("join_ref"),
                value.get("ref"),
                value.get("topic"),
                value.get("event"),
                value.get("payload"),
            )
        return Frame(raw, value)


Pred = Callable[[Frame], bool]


def reply_to(ref: str | None, topic: str | None = None) -> Pred:
    return lambda f: f.event == "phx_reply" and f.ref == ref and (topic is None or f.topic == topic)


def event_is(event: str, topic: str | None = None) -> Pred:
    return lambda f: f.event == event and (topic is None or f.topic == topic)


def system_msg(topic: str) -> Pred:
    return event_is("system", topic)


def user_broadcast(user_event: str, topic: str | None = None) -> Pred:
    """A delivered broadcast (text or kind 4) whose user event is ``user_event`` (a marker)."""

    def match(f: Frame) -> bool:
        if f.event != "broadcast" or (topic is not None and f.topic != topic):
            return False
        return isinstance(f.payload, dict) and f.payload.get("event") == user_event

    return match


def _show(frames: list[Frame]) -> str:
    return ", ".join(repr(f.raw)[:300] for f in frames)


# --- the client ----------------------------------------------------------------------------


class RawClient:
    def __init__(self, ws: ClientConnection, vsn: str) -> None:
        self.ws = ws
        # Frames without a vsn parameter are V1 (protocol.md §1.2).
        self.vsn = vsn
        self.received: list[Frame] = []  # everything, for the "never kinds 0/1/2" check (§1.6)
        self._buffer: list[Frame] = []
        self._cond = asyncio.Condition()
        self._closed = False
        self._ref = 0
        self._barriers = 0
        self.join_refs: dict[str, str | None] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = Frame.parse(raw, self.vsn)
                self.received.append(frame)
                async with self._cond:
                    self._buffer.append(frame)
                    self._cond.notify_all()
        except ConnectionClosed:
            pass
        finally:
            async with self._cond:
                self._closed = True
                self._cond.notify_all()

    # -- refs and wire shapes --

    def next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    def wire(self, join_ref: Any, ref: Any, topic: str, event: str, payload: Any) -> Any:
        """The exact decoded JSON the server must send in this socket's serializer (§1.5)."""
        if self.vsn == V2:
            return [join_ref, ref, topic, event, payload]
        return {"topic": topic, "event": event, "payload": payload, "ref": ref}

    # -- sending --

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send(data)

    async def send_msg(
        self, topic: str, event: str, payload: Any, ref: str | None, join_ref: str | None = None
    ) -> None:
        if self.vsn == V2:
            text = json.dumps([join_ref, ref, topic, event, payload])
        else:
            text = json.dumps(
                {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref}
            )
        await self.send_text(text)

    async def push(
        self, topic: str, event: str, payload: Any, *, ref: str | None = None, join_ref: Any = _ANON
    ) -> str:
        """Send a channel push with a fresh ref and (by default) the topic's current join_ref."""
        ref = ref if ref is not None else self.next_ref()
        jr = self.join_refs.get(topic) if join_ref is _ANON else join_ref
        await self.send_msg(topic, event, payload, ref, jr)
        return ref

    async def heartbeat(self, ref: str | None = "hb") -> Frame:
        await self.send_msg("phoenix", "heartbeat", {}, ref, None)
        frame = await self.expect(reply_to(ref, "phoenix"))
        assert frame.value == self.wire(None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}})
        return frame

    async def join(
        self,
        topic: str,
        config: Mapping[str, Any] | None = None,
        *,
        payload: Any = None,
        ref: str | None = None,
        join_ref: str | None = None,
        access_token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Frame:
        """Send ``phx_join`` and return its reply; remembers the join_ref if the join succeeded."""
        ref = ref if ref is not None else self.next_ref()
        join_ref = join_ref if join_ref is not None else ref
        if payload is None:
            payload = {"config": dict(config) if config is not None else {}}
            if access_token is not None:
                payload["access_token"] = access_token
        await self.send_msg(topic, "phx_join", payload, ref, join_ref)
        reply = await self.expect(reply_to(ref, topic), timeout)
        if isinstance(reply.payload, dict) and reply.payload.get("status") == "ok":
            self.join_refs[topic] = join_ref
        return reply

    async def join_ok(self, topic: str, config: Mapping[str, Any] | None = None, **kw: Any) -> str:
        reply = await self.join(topic, config, **kw)
        assert isinstance(reply.payload, dict) and reply.payload.get("status") == "ok", reply.value
        jr = self.join_refs[topic]
        assert jr is not None
        return jr

    async def broadcast(
        self, topic: str, event: str, data: Any, *, ref: str | None = None, join_ref: Any = _ANON
    ) -> str:
        payload = {"type": "broadcast", "event": event, "payload": data}
        return await self.push(topic, "broadcast", payload, ref=ref, join_ref=join_ref)

    async def send_kind3(
        self,
        topic: str,
        user_event: str,
        payload: bytes,
        encoding: int,
        *,
        ref: str | None = None,
        join_ref: Any = _ANON,
        metadata: bytes = b"",
    ) -> str:
        ref = ref if ref is not None else self.next_ref()
        jr = self.join_refs.get(topic) if join_ref is _ANON else join_ref
        await self.send_bytes(kind3(jr, ref, topic, user_event, payload, encoding, metadata))
        return ref

    async def ping(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """WebSocket PING control frame; returns once the PONG has arrived (§2.2)."""
        waiter = await self.ws.ping()
        await asyncio.wait_for(waiter, timeout)

    # -- receiving --

    def _describe(self) -> str:
        return "buffered: " + ", ".join(repr(f.raw)[:300] for f in self._buffer) if self._buffer else "nothing buffered"

    async def expect(self, pred: Pred | None = None, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """Remove and return the first buffered or arriving frame matching ``pred``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._cond:
            while True:
                for i, frame in enumerate(self._buffer):
                    if pred is None or pred(frame):
                        del self._buffer[i]
                        return frame
                if self._closed:
                    raise AssertionError(f"socket closed ({self.ws.close_code}) before expected frame; {self._describe()}")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise AssertionError(f"no matching frame within {timeout}s; {self._describe()}")
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except TimeoutError:
                    raise AssertionError(f"no matching frame within {timeout}s; {self._describe()}") from None

    async def next_frame(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        return await self.expect(None, timeout)

    async def barrier(self, timeout: float = DEFAULT_TIMEOUT) -> list[Frame]:
        """A heartbeat round trip; returns the unconsumed frames that arrived before its reply.

        They stay buffered (only the reply is taken). Fails if the socket closes first.
        """
        self._barriers += 1
        ref = f"barrier-{self._barriers}"
        await self.send_msg("phoenix", "heartbeat", {}, ref, None)
        reply = await self.expect(reply_to(ref, "phoenix"), timeout)
        assert reply.value == self.wire(None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}})
        cut = self.position(reply)
        return [f for f in self._buffer if self.position(f) < cut]

    async def drain(self, timeout: float = DEFAULT_TIMEOUT) -> list[Frame]:
        """A barrier that also takes the frames it returns out of the buffer."""
        frames = await self.barrier(timeout)
        taken = {id(f) for f in frames}
        self._buffer = [f for f in self._buffer if id(f) not in taken]
        return frames

    async def assert_nothing_pending(self, pred: Pred | None = None) -> None:
        """After a heartbeat round trip, no unconsumed frame (matching ``pred``) has arrived."""
        hits = [f for f in await self.barrier() if pred is None or pred(f)]
        assert not hits, f"unexpected frame(s): {_show(hits)}"

    async def assert_nothing_before(
        self, marker: Pred, pred: Pred | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Frame:
        """Take the next frame matching ``marker``; no unconsumed frame (matching ``pred``)
        arrived before it. The marker was sent after the action under test, on the same path."""
        frame = await self.expect(marker, timeout)
        cut = self.position(frame)
        hits = [f for f in self._buffer if self.position(f) < cut and (pred is None or pred(f))]
        assert not hits, f"unexpected frame(s) before the marker {frame.raw!r}: {_show(hits)}"
        return frame

    def position(self, frame: Frame) -> int:
        """Arrival index of ``frame`` among all frames this socket received (for ordering checks)."""
        for i, f in enumerate(self.received):
            if f is frame:
                return i
        raise AssertionError(f"frame was never received: {frame.raw!r}")

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def wait_closed(self, timeout: float) -> int | None:
        """Wait for the server to close the socket; returns the close code it sent (1006 if none)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._cond:
            while not self._closed:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise AssertionError(f"socket still open after {timeout}s")
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except TimeoutError:
                    raise AssertionError(f"socket still open after {timeout}s") from None
        return self.ws.close_code

    def check_binary_kinds(self) -> None:
        """§1.6: only kind 4 may reach a V2 client; V1 clients never get binary frames."""
        for frame in self.received:
            if frame.is_binary:
                assert self.vsn == V2, f"binary frame sent to a V1 client: {frame.raw!r}"
                assert frame.kind == 4, f"binary frame of kind {frame.kind} sent to a client: {frame.raw!r}"

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        try:
            await self._reader
        except asyncio.CancelledError:
            pass


def ws_url(server: Any, path: str, params: Mapping[str, str]) -> str:
    query = urlencode(params)
    return f"{server.ws_url}{path}" + (f"?{query}" if query else "")


def _params(server: Any, vsn: str | None, apikey: Any, params: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    key = server.anon_key if apikey is _ANON else apikey
    if key is not None:
        out["apikey"] = key
    if vsn is not None:
        out["vsn"] = vsn
    out.update(params or {})
    return out


def _source(address: str | None) -> dict[str, Any]:
    return {} if address is None else {"local_addr": (address, 0)}


@asynccontextmanager
async def open_client(
    server: Any,
    vsn: str | None = V2,
    *,
    path: str = "/socket/websocket",
    apikey: Any = _ANON,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    source: str | None = None,
    host: str | None = None,
) -> AsyncIterator[RawClient]:
    """Connect (apikey defaults to the server's anon key) and yield a RawClient; ``source``
    is a local address to connect from (e.g. ``127.0.0.2``); ``host`` the name the request's
    Host header carries (the socket still goes to the server's own address)."""
    url = ws_url(server, path, _params(server, vsn, apikey, params))
    target: dict[str, Any] = {}
    if host is not None:
        url = url.replace("127.0.0.1", host, 1)
        target = {"host": "127.0.0.1", "port": server.port}
    ws = await connect(
        url,
        **_source(source),
        **target,
        additional_headers=dict(headers or {}),
        compression=None,
        max_size=None,
        ping_interval=None,  # keep the socket's inbound traffic exactly what the test sends
        open_timeout=10,
    )
    client = RawClient(ws, vsn if vsn is not None else V1)
    failed = False
    try:
        yield client
    except BaseException:
        failed = True
        raise
    finally:
        await client.close()
        if not failed:
            client.check_binary_kinds()


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    content_type: str | None
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def refused_handshake(
    server: Any,
    vsn: str | None = V2,
    *,
    path: str = "/socket/websocket",
    apikey: Any = _ANON,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    source: str | None = None,
) -> Refusal:
    """Attempt an upgrade that must be refused; return the plain HTTP response (§1.4)."""
    url = ws_url(server, path, _params(server, vsn, apikey, params))
    try:
        ws = await connect(url, **_source(source), additional_headers=dict(headers or {}), compression=None,
                           open_timeout=10)
    except InvalidStatus as exc:
        resp = exc.response
        return Refusal(resp.status_code, resp.headers.get("Content-Type"), resp.body)
    await ws.close()
    raise AssertionError(f"upgrade to {url} was accepted but must be refused")
