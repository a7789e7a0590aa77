"""HTTP functions: signed deliveries, replies that broadcast, retries, dead letters, replay,
order per topic and the per-trigger concurrency limit."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fnsupport import SECRET, FnServer, Published, free_port, settle, wait_for, write_config

from realtime_channels.functions import FunctionsEngine, RealtimeEvent, load_config

FAST = "backoff_base = 0.01\nbackoff_max = 0.02\n"


def _trigger(url: str, *, name: str = "hook", extra: str = "", on: str = "broadcast", topic: str = "room:*",
             event: str | None = "message") -> str:
    ev = f'event = "{event}"\n' if event else ""
    return f'[[trigger]]\nname = "{name}"\non = "{on}"\ntopic = "{topic}"\n{ev}url = "{url}"\n{FAST}{extra}\n'


EngineFactory = Callable[..., Any]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    engines: list[FunctionsEngine] = []

    async def factory(body: str, *, service_role_key: str | None = None, queue: str = "") -> tuple[
            FunctionsEngine, Published]:
        published = Published()
        cfg = load_config(write_config(tmp_path, f"[queue]\n{queue}\n{body}"))
        engine = FunctionsEngine(cfg, secret=SECRET, service_role_key=service_role_key, publish=published)
        await engine.start()
        engines.append(engine)
        return engine, published

    yield factory
    for e in engines:
        await e.stop()


def bcast(topic: str, payload: Any, event: str = "message", claims: dict[str, Any] | None = None) -> RealtimeEvent:
    return RealtimeEvent("broadcast", topic, event, payload, claims)


async def reply_response(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
    return web.json_response({"broadcast": {"event": "response", "payload": {"got": event["payload"]}}})


async def test_signed_event_and_reply_broadcast(fn_server: FnServer, make_engine: EngineFactory) -> None:
    url = fn_server.on("/respond", reply_response)
    engine, published = await make_engine(_trigger(url), service_role_key="service-key")
    engine.observe(bcast("room:1", {"text": "hi"}, claims={"sub": "u1", "role": "authenticated"}))
    await wait_for(lambda: len(published.items) == 1, what="the function's reply")

    (req,) = fn_server.received
    assert req.signature_ok
    assert req.headers["authorization"] == "Bearer service-key"
    assert req.headers["content-type"] == "application/json"
    ev = req.event
    uuid.UUID(ev["id"], version=4)
    assert req.headers["webhook-id"] == ev["id"]
    assert {k: ev[k] for k in ("type", "trigger", "topic", "event", "payload", "claims")} == {
        "type": "broadcast", "trigger": "hook", "topic": "room:1", "event": "message",
        "payload": {"text": "hi"}, "claims": {"sub": "u1", "role": "authenticated"},
    }
    assert ev["timestamp"].endswith("Z")
    assert published.items == [("room:1", "response", {"got": {"text": "hi"}})]
    m = engine.metrics()["hook"]
    assert (m["delivered"], m["retried"], m["failed"], m["queued"]) == (1, 0, 0, 0)
    assert m["latency_p50_ms"] > 0 and m["latency_p99_ms"] >= m["latency_p50_ms"]


async def test_topic_and_event_globs_select_events(fn_server: FnServer, make_engine: EngineFactory) -> None:
    url = fn_server.on("/r", reply_response)
    engine, published = await make_engine(_trigger(url, topic="room:*", event="msg*"))
    engine.observe(bcast("lobby", 1, event="message"))       # topic does not match
    engine.observe(bcast("room:a", 2, event="typing"))       # event does not match
    engine.observe(RealtimeEvent("presence.join", "room:a", None, {}, None))  # other kind
    engine.observe(bcast("room:a", 3, event="msg-sent"))
    await wait_for(lambda: len(published.items) == 1)
    await settle()
    assert [e["payload"] for e in fn_server.events()] == [3]


async def test_no_secret_sends_no_signature_and_no_authorization(fn_server: FnServer, tmp_path: Path) -> None:
    url = fn_server.on("/r", reply_response)
    published = Published()
    engine = FunctionsEngine(load_config(write_config(tmp_path, _trigger(url))), secret=None,
                             service_role_key=None, publish=published)
    await engine.start()
    try:
        engine.observe(bcast("room:1", {}))
        await wait_for(lambda: len(fn_server.received) == 1)
        headers = fn_server.received[0].headers
        assert "webhook-signature" not in headers and "authorization" not in headers
        assert headers["webhook-id"] == fn_server.received[0].event["id"]
    finally:
        await engine.stop()


async def test_garbage_and_empty_replies_are_delivered_without_action(
        fn_server: FnServer, make_engine: EngineFactory, caplog: pytest.LogCaptureFixture) -> None:
    async def garbage(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        return web.Response(text="<html>not json</html>", content_type="text/html")

    async def empty(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        return web.Response(status=204)

    async def other_json(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        return web.json_response({"broadcast": {"payload": "no event name"}, "ok": True})

    g = fn_server.on("/garbage", garbage)
    e = fn_server.on("/empty", empty)
    o = fn_server.on("/other", other_json)
    engine, published = await make_engine(_trigger(g, name="g") + _trigger(e, name="e") + _trigger(o, name="o"))
    with caplog.at_level(logging.WARNING, logger="realtime_channels.functions"):
        engine.observe(bcast("room:1", {}))
        await wait_for(lambda: all(engine.metrics()[n]["delivered"] == 1 for n in "geo"))
    assert published.items == []
    assert len(fn_server.received) == 3  # each delivered once: no retry
    garbage_id = fn_server.events("/garbage")[0]["id"]
    assert any("not JSON" in r.getMessage() and garbage_id in r.getMessage() for r in caplog.records)


async def test_500_is_retried_then_dead_lettered_then_replayed(fn_server: FnServer,
                                                               make_engine: EngineFactory) -> None:
    healthy = False

    async def failing(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        if healthy:
            return await reply_response(request, event, attempt)
        return web.Response(status=500, text="boom")

    url = fn_server.on("/f", failing)
    engine, published = await make_engine(_trigger(url, extra="max_attempts = 3\n"))
    engine.observe(bcast("room:1", {"n": 1}))
    await wait_for(lambda: engine.metrics()["hook"]["failed"] == 1, what="the dead letter")
    (dead,) = await engine.dlq_list()
    assert dead["attempts"] == 3 and dead["last_error"] == "HTTP 500" and dead["trigger"] == "hook"
    ids = {r.headers["webhook-id"] for r in fn_server.received}
    assert ids == {dead["id"]} and len(fn_server.received) == 3  # same idempotency key every time
    m = engine.metrics()["hook"]
    assert (m["delivered"], m["retried"], m["failed"], m["errors"]) == (0, 2, 1, 3)

    healthy = True
    assert await engine.dlq_replay(["not-an-id"]) == 0
    assert await engine.dlq_replay([dead["id"]]) == 1
    await wait_for(lambda: len(published.items) == 1, what="delivery after replay")
    assert fn_server.received[-1].event["id"] == dead["id"]
    assert await engine.dlq_list() == []


async def test_4xx_is_dead_lettered_at_once_but_408_and_429_are_retried(
        fn_server: FnServer, make_engine: EngineFactory) -> None:
    def status(code: int) -> Any:
        async def behaviour(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
            if attempt == 1:
                return web.Response(status=code)
            return await reply_response(request, event, attempt)
        return behaviour

    body = "".join(_trigger(fn_server.on(f"/{code}", status(code)), name=f"s{code}", extra="max_attempts = 5\n")
                   for code in (400, 403, 408, 429, 503))
    engine, published = await make_engine(body)
    engine.observe(bcast("room:1", {}))
    await wait_for(lambda: len(published.items) == 3, what="the retried ones to succeed")
    await wait_for(lambda: len(fn_server.received) == 5 + 3)
    m = engine.metrics()
    assert [m[f"s{c}"]["failed"] for c in (400, 403)] == [1, 1]
    assert [m[f"s{c}"]["delivered"] for c in (408, 429, 503)] == [1, 1, 1]
    assert sorted(d["last_error"] for d in await engine.dlq_list()) == ["HTTP 400", "HTTP 403"]
    assert all(d["attempts"] == 1 for d in await engine.dlq_list())


async def test_timeout_is_retried_then_dead_lettered(fn_server: FnServer, make_engine: EngineFactory) -> None:
    hang = asyncio.Event()

    async def slow(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        await hang.wait()
        return web.Response(status=200)

    url = fn_server.on("/slow", slow)
    engine, _ = await make_engine(_trigger(url, extra="timeout = 0.05\nmax_attempts = 2\n"))
    engine.observe(bcast("room:1", {}))
    await wait_for(lambda: engine.metrics()["hook"]["failed"] == 1)
    (dead,) = await engine.dlq_list()
    assert dead["attempts"] == 2 and "timed out" in dead["last_error"]
    hang.set()


async def test_unreachable_function_is_retried_then_dead_lettered(make_engine: EngineFactory) -> None:
    url = f"http://127.0.0.1:{free_port()}/nothing-listens-here"
    engine, _ = await make_engine(_trigger(url, extra="max_attempts = 3\n"))
    engine.observe(bcast("room:1", {"x": 1}))
    await wait_for(lambda: engine.metrics()["hook"]["failed"] == 1)
    (dead,) = await engine.dlq_list()
    assert dead["attempts"] == 3 and "Connect" in dead["last_error"]
    assert dead["event"]["payload"] == {"x": 1}


async def test_order_per_topic_under_retries(fn_server: FnServer, make_engine: EngineFactory) -> None:
    """Every event fails its first attempt; each topic still sees its events in order."""
    delivered: dict[str, list[int]] = {}

    async def first_fails(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        if attempt == 1:
            return web.Response(status=503)
        delivered.setdefault(event["topic"], []).append(event["payload"]["n"])
        return web.Response(status=200)

    url = fn_server.on("/o", first_fails)
    engine, _ = await make_engine(_trigger(url, extra="concurrency = 8\n"))
    topics = [f"room:{i}" for i in range(4)]
    for n in range(10):
        for t in topics:
            engine.observe(bcast(t, {"n": n}))
    await wait_for(lambda: engine.metrics()["hook"]["delivered"] == 40, what="all deliveries")
    assert delivered == {t: list(range(10)) for t in topics}
    assert engine.metrics()["hook"]["retried"] == 40


async def test_a_failing_head_blocks_only_its_own_topic(fn_server: FnServer, make_engine: EngineFactory) -> None:
    healthy = asyncio.Event()
    order: list[tuple[str, int]] = []

    async def behaviour(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        if event["topic"] == "room:stuck" and not healthy.is_set():
            return web.Response(status=500)
        order.append((event["topic"], event["payload"]))
        return web.Response(status=200)

    url = fn_server.on("/h", behaviour)
    engine, _ = await make_engine(_trigger(url, extra="max_attempts = 1000\n"))
    for n in range(3):
        engine.observe(bcast("room:stuck", n))
        engine.observe(bcast("room:free", n))
    await wait_for(lambda: engine.metrics()["hook"]["delivered"] == 3, what="the free topic")
    assert order == [("room:free", 0), ("room:free", 1), ("room:free", 2)]
    stuck = [r.event["payload"] for r in fn_server.received if r.event["topic"] == "room:stuck"]
    assert set(stuck) == {0}  # only the head was tried; the rest wait behind it
    assert engine.metrics()["hook"]["queued"] == 3
    healthy.set()
    await wait_for(lambda: [p for t, p in order if t == "room:stuck"] == [0, 1, 2], what="the stuck topic")


async def test_concurrency_limit_across_topics(fn_server: FnServer, make_engine: EngineFactory) -> None:
    release = asyncio.Event()
    in_flight = 0
    peak = 0

    async def hold(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await release.wait()
        finally:
            in_flight -= 1
        return web.Response(status=200)

    url = fn_server.on("/c", hold)
    engine, _ = await make_engine(_trigger(url, extra="concurrency = 2\n"))
    for i in range(6):
        engine.observe(bcast(f"room:{i}", i))
    await wait_for(lambda: in_flight == 2, what="two requests in flight")
    await settle()
    assert in_flight == 2 and len(fn_server.received) == 2
    release.set()
    await wait_for(lambda: engine.metrics()["hook"]["delivered"] == 6)
    assert peak == 2


async def test_retry_after_is_honoured_within_the_cap(fn_server: FnServer, make_engine: EngineFactory) -> None:
    async def busy(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        if attempt == 1:
            return web.Response(status=429, headers={"Retry-After": "3600"})
        return web.Response(status=200)

    url = fn_server.on("/busy", busy)
    engine, _ = await make_engine(_trigger(url))
    engine.observe(bcast("room:1", {}))
    # backoff_max is 0.02 s: an hour-long Retry-After is capped, so this completes promptly
    await wait_for(lambda: engine.metrics()["hook"]["delivered"] == 1, timeout=5)


async def test_full_queue_dead_letters_new_events(fn_server: FnServer, make_engine: EngineFactory) -> None:
    release = asyncio.Event()

    async def hold(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    url = fn_server.on("/q", hold)
    engine, _ = await make_engine(_trigger(url), queue="max_pending = 3\n")
    for n in range(5):
        engine.observe(bcast("room:1", n))
    dead = await engine.dlq_list()
    assert [d["event"]["payload"] for d in dead] == [3, 4]
    assert all(d["last_error"].startswith("queue full") for d in dead)
    release.set()
    await wait_for(lambda: engine.metrics()["hook"]["delivered"] == 3)


async def test_observe_after_stop_and_bad_payloads_never_raise(fn_server: FnServer,
                                                               make_engine: EngineFactory) -> None:
    url = fn_server.on("/r", reply_response)
    engine, published = await make_engine(_trigger(url))
    engine.observe(bcast("room:1", {"binary": b"\x00\x01", "set": {1}}))
    await wait_for(lambda: len(published.items) == 1)
    assert fn_server.events()[0]["payload"] == {"binary": {"binary": "AAE="}, "set": [1]}
    engine.observe(bcast("room:1", object()))  # not JSON: logged and counted, never raised
    assert engine.metrics()["hook"]["failed"] == 1 and engine.metrics()["hook"]["queued"] == 0
    await engine.stop()
    engine.observe(bcast("room:1", {}))
    assert engine.metrics()["hook"]["queued"] == 0
