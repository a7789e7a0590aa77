"""authorize_join / authorize_send gates: allow, deny with a reason, rewrite, deadlines and
fail-open / fail-closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import fnmod
import pytest
from aiohttp import web
from fnsupport import SECRET, FnServer, Published, free_port, write_config

from realtime_channels.functions import FunctionsEngine, GateResult, load_config

EngineFactory = Callable[[str], Any]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    engines: list[FunctionsEngine] = []

    async def factory(body: str) -> FunctionsEngine:
        engine = FunctionsEngine(load_config(write_config(tmp_path, body)), secret=SECRET,
                                 service_role_key="srk", publish=Published())
        await engine.start()
        engines.append(engine)
        return engine

    yield factory
    for e in engines:
        await e.stop()


def _gate(kind: str, target: str, *, topic: str = "*", extra: str = "", name: str | None = None) -> str:
    key = "url" if target.startswith("http") else "python"
    named = f'name = "{name}"\n' if name else ""
    return f'[[gate]]\n{named}kind = "{kind}"\ntopic = "{topic}"\n{key} = "{target}"\n{extra}\n'


async def test_no_gate_allows(make_engine: EngineFactory) -> None:
    engine = await make_engine(_gate("authorize_join", "fnmod:deny_gate", topic="private:*"))
    assert await engine.gate_join("public:1", {"role": "anon"}, {}) == GateResult(True)
    assert await engine.gate_send("public:1", "msg", {"a": 1}, {}) == GateResult(True)
    assert not engine.has_gate("authorize_join", "public:1")
    assert engine.has_gate("authorize_join", "private:1")
    assert fnmod.gate_calls == []


async def test_python_join_gate_denies_with_reason_and_allows(make_engine: EngineFactory) -> None:
    engine = await make_engine(_gate("authorize_join", "fnmod:deny_gate", topic="private:*"))
    denied = await engine.gate_join("private:1", {"role": "anon"}, {"broadcast": {"self": True}})
    assert denied == GateResult(False, reason="not allowed on private:1")
    allowed = await engine.gate_join("private:1", {"role": "admin"}, {})
    assert allowed == GateResult(True)
    first = fnmod.gate_calls[0]
    assert {k: first[k] for k in ("type", "topic", "payload", "claims")} == {
        "type": "authorize_join", "topic": "private:1", "payload": {"broadcast": {"self": True}},
        "claims": {"role": "anon"}}
    m = engine.metrics()["gate:gate #1"]
    assert (m["delivered"], m["failed"], m["errors"]) == (1, 1, 0)


async def test_send_gates_rewrite_in_order(make_engine: EngineFactory) -> None:
    body = (_gate("authorize_send", "fnmod:rewrite_gate", topic="chat:*")
            + _gate("authorize_send", "fnmod:tag_gate", topic="chat:*", extra='event = "msg"\n'))
    engine = await make_engine(body)
    res = await engine.gate_send("chat:1", "msg", {"text": "darn it"}, {"sub": "u"})
    assert res == GateResult(True, payload={"text": "**** it", "tagged": True})
    res = await engine.gate_send("chat:1", "typing", {"text": "darn"}, {})  # event glob skips tag_gate
    assert res == GateResult(True, payload={"text": "****"})
    assert [c["event"] for c in fnmod.gate_calls] == ["msg", "msg", "typing"]


async def test_join_gates_never_rewrite(make_engine: EngineFactory) -> None:
    engine = await make_engine(_gate("authorize_join", "fnmod:tag_gate"))
    assert await engine.gate_join("x", {}, {"config": 1}) == GateResult(True)


@pytest.mark.parametrize("fn", ["slow_gate", "garbage_gate", "raising_gate"])
@pytest.mark.parametrize("fail_open", [True, False])
async def test_python_gate_errors_follow_fail_policy(make_engine: EngineFactory, fn: str, fail_open: bool) -> None:
    extra = f"timeout = 0.05\nfail_open = {'true' if fail_open else 'false'}\n"
    engine = await make_engine(_gate("authorize_send", f"fnmod:{fn}", extra=extra, name="g"))
    started = time.monotonic()
    res = await engine.gate_send("t", "e", {"p": 1}, {})
    assert time.monotonic() - started < 2  # the deadline bounds the wait (generously, for slow CI)
    if fail_open:
        assert res == GateResult(True)
    else:
        assert res == GateResult(False, reason="authorization function unavailable")
    assert engine.metrics()["gate:g"]["errors"] == 1


async def test_http_gates(fn_server: FnServer, make_engine: EngineFactory) -> None:
    hang = asyncio.Event()

    async def moderate(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        text = event["payload"].get("text", "")
        if "spam" in text:
            return web.json_response({"allow": False, "reason": "no spam please"})
        return web.json_response({"allow": True, "payload": {"text": text.strip()}})

    async def slow(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        await hang.wait()
        return web.json_response({"allow": True})

    async def broken(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        return web.Response(status=500)

    body = (_gate("authorize_send", fn_server.on("/moderate", moderate), topic="mod:*")
            + _gate("authorize_send", fn_server.on("/slow", slow), topic="slow:*",
                    extra="timeout = 0.05\nfail_open = true\n")
            + _gate("authorize_join", fn_server.on("/broken", broken), topic="broken:*")
            + _gate("authorize_join", f"http://127.0.0.1:{free_port()}/x", topic="gone:*", extra="fail_open = true\n"))
    engine = await make_engine(body)
    assert await engine.gate_send("mod:1", "m", {"text": "buy spam"}, {}) == GateResult(False, "no spam please")
    assert await engine.gate_send("mod:1", "m", {"text": "  hi  "}, {}) == GateResult(True, payload={"text": "hi"})
    assert await engine.gate_send("slow:1", "m", {}, {}) == GateResult(True)
    assert await engine.gate_join("broken:1", {}, {}) == GateResult(False, "authorization function unavailable")
    assert await engine.gate_join("gone:1", {}, {}) == GateResult(True)
    hang.set()
    assert all(r.signature_ok for r in fn_server.received)
    assert all(r.headers["authorization"] == "Bearer srk" for r in fn_server.received)
    assert fn_server.events("/moderate")[0]["type"] == "authorize_send"
