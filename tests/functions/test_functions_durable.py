"""Durable mode against a real PostgreSQL: a restart with queued events delivers each of them,
with its idempotency key unchanged; the dead-letter list survives and is replayed from the CLI"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from fnsupport import SECRET, FnServer, Published, wait_for, write_config

from realtime_channels.functions import FunctionsEngine, RealtimeEvent, load_config
from realtime_channels.functions.cli import add_functions_commands


@pytest.fixture(scope="module")
def db_dsn(pg_cluster: Any) -> Iterator[str]:
    name = "rc_functions_durable"
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
        admin.execute(f'create database "{name}"')
    yield pg_cluster.dsn.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def dsn(db_dsn: str) -> str:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("drop table if exists realtime.rc_function_events")
    return db_dsn


def rows(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute("select id::text, trigger, topic, event, attempts, state, last_error"
                           " from realtime.rc_function_events order by seq")
        return [dict(zip(("id", "trigger", "topic", "event", "attempts", "state", "last_error"), r, strict=True))
                for r in cur.fetchall()]


@pytest.fixture
async def engines() -> AsyncIterator[list[FunctionsEngine]]:
    started: list[FunctionsEngine] = []
    yield started
    for e in started:
        await e.stop()


async def _start(config: str, dsn: str, started: list[FunctionsEngine]) -> tuple[FunctionsEngine, Published]:
    published = Published()
    engine = FunctionsEngine(load_config(config), secret=SECRET, service_role_key=None, publish=published,
                             database_url=dsn)
    await engine.start()
    started.append(engine)
    return engine, published


def _config(tmp_path: Path, url: str, extra: str = "") -> str:
    return write_config(tmp_path, f'[queue]\npoll_interval = 0.05\n[[trigger]]\nname = "d"\non = "broadcast"\n'
                                  f'url = "{url}"\nbackoff_base = 0.01\nbackoff_max = 0.02\nmax_attempts = 1000\n'
                                  f'concurrency = 8\n{extra}')


async def test_restart_delivers_every_queued_event_once_with_the_same_id(
        fn_server: FnServer, tmp_path: Path, dsn: str, engines: list[FunctionsEngine]) -> None:
    delivered: list[dict[str, Any]] = []

    async def down(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        return web.Response(status=503)

    async def up(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        delivered.append(event)
        return web.json_response({"broadcast": {"event": "response", "payload": event["payload"]}})

    # The function is "redeployed" at another path across the restart, so a request the first
    # engine abandoned mid-flight at its stop can never count as a delivery here.
    config = _config(tmp_path, fn_server.on("/down", down))
    first, _ = await _start(config, dsn, engines)
    topics = ["room:a", "room:b", "room:c"]
    for n in range(3):
        for t in topics:
            first.observe(RealtimeEvent("broadcast", t, "message", {"n": n}, {"sub": "u"}))
    # the head of each topic is being retried; the rest wait behind it
    await wait_for(lambda: {r.event["topic"] for r in fn_server.received} == set(topics), what="heads attempted")
    for t in topics:  # accepted just before the stop: the stop flushes them to the table
        first.observe(RealtimeEvent("broadcast", t, "message", {"n": 3}, {"sub": "u"}))
    await first.stop()

    queued = rows(dsn)
    assert len(queued) == 12 and {r["state"] for r in queued} == {"queued"}
    assert all(r["event"]["id"] == r["id"] for r in queued)
    tried_before = {r.event["id"] for r in fn_server.received}
    assert tried_before <= {r["id"] for r in queued}
    assert all(r["attempts"] >= 1 and r["last_error"] == "HTTP 503" for r in queued if r["id"] in tried_before)

    fixed = _config(tmp_path, fn_server.on("/up", up))
    second, published = await _start(fixed, dsn, engines)
    await wait_for(lambda: second.metrics()["d"]["delivered"] == 12, what="delivery after the restart")
    ids = [e["id"] for e in delivered]
    assert sorted(ids) == sorted(r["id"] for r in queued)  # each queued event, exactly once
    assert {e["id"]: e for e in delivered} == {r["id"]: r["event"] for r in queued}  # same id, same body
    for t in topics:
        assert [e["payload"]["n"] for e in delivered if e["topic"] == t] == [0, 1, 2, 3]
    await wait_for(lambda: rows(dsn) == [], what="delivered rows to be deleted")
    assert len(published.items) == 12


async def test_durable_dead_letters_survive_and_replay_from_the_cli(
        fn_server: FnServer, tmp_path: Path, dsn: str, engines: list[FunctionsEngine],
        capsys: pytest.CaptureFixture[str]) -> None:
    healthy = False

    async def behaviour(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        return web.Response(status=200 if healthy else 422)

    config = _config(tmp_path, fn_server.on("/x", behaviour))
    engine, _ = await _start(config, dsn, engines)
    for n in range(3):
        engine.observe(RealtimeEvent("broadcast", f"room:{n}", "message", {"n": n}, None))
    await wait_for(lambda: engine.metrics()["d"]["failed"] == 3, what="three dead letters")
    await engine.stop()

    again, _ = await _start(config, dsn, engines)
    dead = await again.dlq_list()
    assert sorted(d["event"]["payload"]["n"] for d in dead) == [0, 1, 2]
    assert all(d["attempts"] == 1 and d["last_error"] == "HTTP 422" for d in dead)

    assert _cli(["functions", "dlq", "list", "--json", "--database-url", dsn]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["id"] for d in listed] == [d["id"] for d in dead]
    assert _cli(["functions", "dlq", "list", "--database-url", dsn]) == 0
    table = capsys.readouterr().out
    assert all(d["id"] in table for d in dead) and "HTTP 422" in table

    healthy = True
    target = dead[0]["id"]
    assert _cli(["functions", "dlq", "replay", "--id", target, "--database-url", dsn]) == 0
    assert "re-queued 1 event(s)" in capsys.readouterr().out
    await wait_for(lambda: again.metrics()["d"]["delivered"] == 1, what="the running engine to adopt the replay")
    assert fn_server.received[-1].event["id"] == target

    missing = str(uuid.uuid4())
    assert _cli(["functions", "dlq", "replay", "--id", missing, "--database-url", dsn]) == 1
    assert missing in capsys.readouterr().err

    assert await again.dlq_replay() == 2  # in-process replay of the rest
    await wait_for(lambda: again.metrics()["d"]["delivered"] == 3)
    await wait_for(lambda: rows(dsn) == [])


async def test_rows_of_unconfigured_triggers_go_to_the_dead_letter_list(
        fn_server: FnServer, tmp_path: Path, dsn: str, engines: list[FunctionsEngine]) -> None:
    async def ok(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        return web.Response(status=500)

    config = _config(tmp_path, fn_server.on("/u", ok))
    engine, _ = await _start(config, dsn, engines)
    engine.observe(RealtimeEvent("broadcast", "room:1", "message", {}, None))
    await wait_for(lambda: len(rows(dsn)) == 1)
    await engine.stop()
    renamed = write_config(tmp_path, config_text(config).replace('name = "d"', 'name = "renamed"'))
    other, _ = await _start(renamed, dsn, engines)
    (dead,) = await other.dlq_list()
    assert dead["trigger"] == "d" and dead["last_error"] == "trigger 'd' is not configured"


def config_text(path: str) -> str:
    # write_config prepends python_path; strip it so it is not duplicated
    return "\n".join(Path(path).read_text(encoding="utf-8").splitlines()[1:])


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="realtime-channels")
    add_functions_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    # The CLI runs its own event loop (asyncio.run), so it runs in a thread.
    return _in_thread(args)


def _in_thread(args: argparse.Namespace) -> int:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return int(pool.submit(args.func, args).result(timeout=30))


def test_cli_without_a_database_explains_where_the_dlq_lives(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("REALTIME_DATABASE_URL", raising=False)
    assert _cli(["functions", "dlq", "list"]) == 2
    assert "lives in memory inside the server process" in capsys.readouterr().err
    assert _cli(["functions", "dlq", "replay"]) == 2


async def test_live_engines_share_a_database_and_adopt_the_rows_of_a_stopped_one(
        fn_server: FnServer, tmp_path: Path, dsn: str, engines: list[FunctionsEngine]) -> None:
    delivered: list[str] = []

    async def down(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        return web.Response(status=503)

    async def up(request: web.Request, event: dict[str, Any], attempt: int) -> web.StreamResponse:
        delivered.append(event["id"])
        return web.Response(status=200)

    first, _ = await _start(_config(tmp_path, fn_server.on("/down", down)), dsn, engines)
    for n in range(4):
        first.observe(RealtimeEvent("broadcast", "room:1", "message", {"n": n}, None))
    await wait_for(lambda: len(rows(dsn)) == 4, what="rows of the first engine")

    second, _ = await _start(_config(tmp_path, fn_server.on("/up", up)), dsn, engines)
    await wait_for(lambda: second.polls >= 3, what="a few polls of the second engine")
    assert second.metrics()["d"]["queued"] == 0 and delivered == []  # the first one is alive: hands off

    owned_by_first = [r["id"] for r in rows(dsn)]
    await first.stop()  # releases its ownership: the second adopts its rows on the next poll
    await wait_for(lambda: second.metrics()["d"]["delivered"] == 4, what="adoption by the live engine")
    assert delivered == owned_by_first  # each once, in order, same ids
    await wait_for(lambda: rows(dsn) == [])
