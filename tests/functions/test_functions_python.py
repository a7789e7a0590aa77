"""In-process Python functions, the other trigger kinds, postgres filters and the reply loop
guard."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import fnmod
import pytest
from fnsupport import Published, settle, wait_for, write_config

from realtime_channels.functions import FunctionsEngine, RealtimeEvent, load_config

FAST = "backoff_base = 0.01\nbackoff_max = 0.02\n"


def _py(fn: str, *, name: str = "fn", on: str = "broadcast", topic: str = "room:*", extra: str = "") -> str:
    return f'[[trigger]]\nname = "{name}"\non = "{on}"\ntopic = "{topic}"\npython = "fnmod:{fn}"\n{FAST}{extra}\n'


EngineFactory = Callable[..., Any]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    engines: list[FunctionsEngine] = []

    async def factory(body: str, publish: Callable[[str, str, Any], None] | None = None) -> tuple[
            FunctionsEngine, Published]:
        published = Published()
        cfg = load_config(write_config(tmp_path, body))
        engine = FunctionsEngine(cfg, secret=None, service_role_key=None, publish=publish or published)
        await engine.start()
        engines.append(engine)
        return engine, published

    yield factory
    for e in engines:
        await e.stop()


def bcast(topic: str, payload: Any, event: str = "message") -> RealtimeEvent:
    return RealtimeEvent("broadcast", topic, event, payload, {"sub": "u1"})


async def test_python_function_answers_into_the_channel(make_engine: EngineFactory) -> None:
    engine, published = await make_engine(_py("respond"))
    engine.observe(bcast("room:1", {"text": "hello"}))
    await wait_for(lambda: len(published.items) == 1)
    (event,) = fnmod.calls
    assert published.items == [("room:1", "response", {"echo": {"text": "hello"}, "id": event["id"]})]
    assert {k: event[k] for k in ("type", "topic", "event", "payload", "claims", "trigger")} == {
        "type": "broadcast", "topic": "room:1", "event": "message", "payload": {"text": "hello"},
        "claims": {"sub": "u1"}, "trigger": "fn"}


async def test_context_broadcast_and_reply_lists_and_other_topics(make_engine: EngineFactory) -> None:
    engine, published = await make_engine(_py("respond_elsewhere"))
    engine.observe(bcast("room:9", {}))
    await wait_for(lambda: len(published.items) == 3)
    event_id = fnmod.calls[0]["id"]
    assert published.items == [("audit", "seen", {"id": event_id, "trigger": "fn"}),
                               ("other", "a", 1), ("room:9", "b", 2)]


async def test_payload_is_snapshotted_at_observe(make_engine: EngineFactory) -> None:
    engine, _ = await make_engine(_py("record"))
    payload = {"n": 1}
    engine.observe(bcast("room:1", payload))
    payload["n"] = 2  # the server may reuse its object after observe returns
    await wait_for(lambda: len(fnmod.calls) == 1)
    assert fnmod.calls[0]["payload"] == {"n": 1}


async def test_raising_function_is_logged_with_the_event_id_and_retried(
        make_engine: EngineFactory, caplog: pytest.LogCaptureFixture) -> None:
    fnmod.fail_times = 2
    engine, published = await make_engine(_py("flaky", extra="max_attempts = 3\n"))
    with caplog.at_level(logging.WARNING, logger="realtime_channels.functions"):
        engine.observe(bcast("room:1", "p"))
        await wait_for(lambda: len(published.items) == 1)
    (event_id,) = fnmod.attempts
    assert fnmod.attempts[event_id] == 3
    raised = [r.getMessage() for r in caplog.records if "raised" in r.getMessage()]
    assert len(raised) == 2 and all(event_id in m and "RuntimeError: flaky failure" in m for m in raised)
    assert published.items == [("room:1", "ok", "p")]
    m = engine.metrics()["fn"]
    assert (m["delivered"], m["retried"], m["errors"], m["failed"]) == (1, 2, 2, 0)


async def test_always_raising_function_is_dead_lettered_and_replayable(make_engine: EngineFactory) -> None:
    fnmod.fail_times = 1000
    engine, published = await make_engine(_py("flaky", extra="max_attempts = 2\n"))
    engine.observe(bcast("room:1", "p"))
    await wait_for(lambda: engine.metrics()["fn"]["failed"] == 1)
    (dead,) = await engine.dlq_list()
    assert dead["last_error"] == "RuntimeError: flaky failure 2" and dead["attempts"] == 2
    fnmod.fail_times = 0
    assert await engine.dlq_replay() == 1
    await wait_for(lambda: len(published.items) == 1)
    assert fnmod.calls[0]["id"] == dead["id"]


async def test_a_retry_sees_the_original_event(make_engine: EngineFactory) -> None:
    engine, _ = await make_engine(_py("mutate"))
    engine.observe(bcast("room:1", "original"))
    await wait_for(lambda: engine.metrics()["fn"]["delivered"] == 1)
    assert [c["payload"] for c in fnmod.calls] == ["original", "original"]


async def test_python_timeout_is_retried_then_dead_lettered(make_engine: EngineFactory) -> None:
    engine, _ = await make_engine(_py("never", extra="timeout = 0.02\nmax_attempts = 2\n"))
    engine.observe(bcast("room:1", {}))
    await wait_for(lambda: engine.metrics()["fn"]["failed"] == 1)
    (dead,) = await engine.dlq_list()
    assert dead["last_error"] == "timed out after 0.02s"
    assert list(fnmod.attempts.values()) == [2]


async def test_python_concurrency_limit(make_engine: EngineFactory) -> None:
    fnmod.release = asyncio.Event()
    engine, _ = await make_engine(_py("blocking", extra="concurrency = 3\n"))
    for i in range(10):
        engine.observe(bcast(f"room:{i}", i))
    await wait_for(lambda: fnmod.in_flight == 3)
    await settle()
    assert fnmod.in_flight == 3 and engine.metrics()["fn"]["queued"] == 10
    fnmod.release.set()
    await wait_for(lambda: len(fnmod.calls) == 10)
    assert fnmod.max_in_flight == 3


@pytest.mark.parametrize("on", ["presence.join", "presence.leave", "channel.join", "channel.leave",
                                "connection.open", "connection.close"])
async def test_lifecycle_trigger_kinds(make_engine: EngineFactory, on: str) -> None:
    engine, _ = await make_engine(_py("record", on=on, topic="*"))
    payload = {"reason": "heartbeat timeout"} if on == "connection.close" else {"phx_ref": "x"}
    engine.observe(RealtimeEvent("broadcast", "room:1", "message", {}, None))  # another kind
    engine.observe(RealtimeEvent(on, "room:1", None, payload, {"sub": "u2"}))
    await wait_for(lambda: len(fnmod.calls) == 1)
    await settle()
    assert len(fnmod.calls) == 1
    assert {k: fnmod.calls[0][k] for k in ("type", "topic", "payload", "claims")} == {
        "type": on, "topic": "room:1", "payload": payload, "claims": {"sub": "u2"}}


def _change(kind: str, record: dict[str, Any], old: dict[str, Any] | None = None, table: str = "todos") -> (
        RealtimeEvent):
    data: dict[str, Any] = {
        "schema": "public", "table": table, "type": kind, "commit_timestamp": "2024-01-01T00:00:00Z",
        "columns": [{"name": "id", "type": "int8"}, {"name": "status", "type": "text"},
                    {"name": "due", "type": "timestamptz"}],
        "errors": None,
    }
    if kind != "DELETE":
        data["record"] = record
    if kind != "INSERT":
        data["old_record"] = old or {}
    return RealtimeEvent("postgres", f"public:{table}", kind, data, None, schema="public", table=table)


async def test_postgres_trigger_with_filter_event_and_table(make_engine: EngineFactory) -> None:
    body = ('[[trigger]]\nname = "pg"\non = "postgres"\nschema = "public"\ntable = "todos"\nevent = "*"\n'
            'filter = "id=gt.10"\npython = "fnmod:record"\n')
    engine, _ = await make_engine(body)
    engine.observe(_change("INSERT", {"id": 5, "status": "new"}))
    engine.observe(_change("INSERT", {"id": 11, "status": "new"}))
    engine.observe(_change("UPDATE", {"id": 12, "status": "done"}, {"id": 12}))
    engine.observe(_change("DELETE", {}, {"id": 13}))
    engine.observe(_change("DELETE", {}, {"id": 3}))
    engine.observe(_change("INSERT", {"id": 50}, table="other"))
    await wait_for(lambda: len(fnmod.calls) == 3)
    await settle()
    got = [(c["event"], c["schema"], c["table"]) for c in fnmod.calls]
    assert got == [("INSERT", "public", "todos"), ("UPDATE", "public", "todos"), ("DELETE", "public", "todos")]
    assert fnmod.calls[0]["payload"]["record"] == {"id": 11, "status": "new"}


async def test_postgres_filters_use_the_column_types(make_engine: EngineFactory) -> None:
    body = ('[[trigger]]\nname = "pg"\non = "postgres"\nschema = "public"\ntable = "todos"\nevent = "INSERT"\n'
            'filter = "due=lt.2024-06-01T00:00:00+02:00"\npython = "fnmod:record"\n'
            '[[trigger]]\nname = "bad"\non = "postgres"\nschema = "public"\ntable = "todos"\n'
            'filter = "nope=eq.1"\npython = "fnmod:record"\n'
            '[[trigger]]\nname = "in"\non = "postgres"\nschema = "*"\ntable = "todos"\n'
            'filter = "status=in.(new,open)"\npython = "fnmod:record"\n')
    engine, _ = await make_engine(body)
    engine.observe(_change("INSERT", {"id": 1, "status": "x", "due": "2024-05-31T22:30:00+00:00"}))
    engine.observe(_change("INSERT", {"id": 2, "status": "x", "due": "2024-05-31T21:30:00+00:00"}))
    engine.observe(_change("UPDATE", {"id": 3, "status": "open", "due": None}, {"id": 3}))
    await wait_for(lambda: len(fnmod.calls) == 2)
    await settle()
    assert sorted((c["trigger"], c["payload"]["record"]["id"]) for c in fnmod.calls) == [("in", 3), ("pg", 2)]
    assert engine.metrics()["bad"]["delivered"] == 0


async def test_a_functions_own_broadcast_does_not_retrigger_it(make_engine: EngineFactory) -> None:
    """If the server reports the reply's broadcast back synchronously, it is not observed."""
    holder: dict[str, FunctionsEngine] = {}
    published = Published()

    def publish(topic: str, event: str, payload: Any) -> None:
        published(topic, event, payload)
        holder["e"].observe(RealtimeEvent("broadcast", topic, event, payload, None))

    engine, _ = await make_engine(_py("respond"), publish=publish)
    holder["e"] = engine
    engine.observe(bcast("room:1", "x"))
    await wait_for(lambda: len(published.items) == 1)
    await settle()
    assert len(fnmod.calls) == 1 and len(published.items) == 1


async def test_publish_failure_does_not_fail_the_delivery(make_engine: EngineFactory) -> None:
    def publish(topic: str, event: str, payload: Any) -> None:
        raise RuntimeError("pubsub down")

    engine, _ = await make_engine(_py("respond"), publish=publish)
    engine.observe(bcast("room:1", "x"))
    await wait_for(lambda: engine.metrics()["fn"]["delivered"] == 1)
    assert engine.metrics()["fn"]["retried"] == 0
