"""Functions wired into the real server: the worked example end to end with supabase-js —
a client broadcasts ``message`` and a function answers ``response`` — through the in-process
Python function and through a signed HTTP function; gates deny a join and rewrite a send; a bad
functions file refuses to start naming the line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
import pytest
from aiohttp import web
from pgcluster import create_database, drop_database
from support import ServerProc, make_token, start_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "functions"
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "tests" / "conformance"))
sys.path.insert(0, str(EXAMPLES))

from http_function import make_app  # noqa: E402
from peers import NodePeer, node, unique_topic  # noqa: E402,F401  (node is a fixture)
from rawclient import open_client  # noqa: E402

SECRET = "whsec_" + "dGVzdC1zaWduaW5nLXNlY3JldC1mb3ItZnVuY3Rpb25z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def http_function() -> AsyncIterator[str]:
    """The example HTTP function (checks the Standard Webhooks signature) on a free port."""
    runner = web.AppRunner(make_app(SECRET))
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/respond"
    await runner.cleanup()


def functions_file(tmp: Path, http_url: str) -> Path:
    path = tmp / "functions.toml"
    path.write_text(f"""
python_path = ["{EXAMPLES}", "{Path(__file__).parent}"]

[defaults]
timeout = 5.0
backoff_base = 0.01
backoff_max = 0.05

[[trigger]]
name = "respond-python"
on = "broadcast"
topic = "room:*"
event = "message"
python = "respond:handle"

[[trigger]]
name = "respond-http"
on = "broadcast"
topic = "edge:*"
event = "message"
url = "{http_url}"

[[gate]]
kind = "authorize_join"
topic = "vault:*"
python = "fnmod:deny_gate"

[[gate]]
kind = "authorize_send"
topic = "polite:*"
python = "fnmod:rewrite_gate"
""")
    return path


@pytest.fixture
def fn_server(tmp_path: Path, http_function: str) -> Iterator[ServerProc]:
    srv = start_server(str(tmp_path), REALTIME_FUNCTIONS_CONFIG=str(functions_file(tmp_path, http_function)),
                       REALTIME_FUNCTIONS_SECRET=SECRET)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log()


@pytest.mark.parametrize("prefix", ["room", "edge"])
async def test_supabase_js_message_is_answered_by_a_function(fn_server: ServerProc, node: NodePeer,
                                                             prefix: str) -> None:
    topic = unique_topic(f"{prefix}:")
    await node.add_client("alice", fn_server, "2.0.0", token=make_token("authenticated", sub="alice"))
    await node.subscribe("alice", "ch", topic)
    assert await node.call("send", ch="ch", event="message", payload={"text": "hello"}) == "ok"
    got = await node.wait_broadcast("ch", "response")
    answer = got["payload"]
    assert answer["reply"] == "HELLO" and answer["to"] == "alice"
    assert isinstance(answer["in_reply_to"], str) and len(answer["in_reply_to"]) == 36  # the event id
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{fn_server.http_url}/metrics") as r:
        text = await r.text()
    from prometheus_client.parser import text_string_to_metric_families

    name = "respond-python" if prefix == "room" else "respond-http"
    delivered = {s.labels["trigger"]: s.value for family in text_string_to_metric_families(text)
                 for s in family.samples if s.name == "realtime_function_delivered_total"}
    assert delivered[name] == 1, text


async def test_join_gate_denies_with_the_functions_reason(fn_server: ServerProc) -> None:
    async with open_client(fn_server, "2.0.0") as c:
        reply = await c.join("realtime:vault:1", {})
        assert reply.payload == {"status": "error", "response": {"reason": "not allowed on vault:1"}}
        ok = await c.join("realtime:room:1", {})  # no gate on this topic
        assert ok.payload["status"] == "ok"


async def test_send_gate_rewrites_the_payload(fn_server: ServerProc) -> None:
    async with open_client(fn_server, "1.0.0") as c:
        await c.join_ok("realtime:polite:1", {"broadcast": {"self": True}})
        await c.broadcast("realtime:polite:1", "msg", {"text": "darn it"})
        got = await c.expect(lambda f: f.event == "broadcast")
        assert got.payload["payload"] == {"text": "**** it"}


def test_bad_functions_file_refuses_to_start_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "functions.toml"
    bad.write_text('[[trigger]]\nname = "x"\non = "nonsense"\ntopic = "*"\npython = "respond:handle"\n')
    env = {"REALTIME_FUNCTIONS_CONFIG": str(bad), "REALTIME_PORT": str(_free_port()),
           "REALTIME_JWT_SECRET": "x" * 40}
    proc = subprocess.run([sys.executable, "-m", "realtime_channels", "serve"], env={**_env(), **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{bad}:3:" in proc.stderr and "nonsense" in proc.stderr, proc.stderr


def _env() -> dict[str, str]:
    return dict(os.environ)


EVENT_TRIGGERS = "\n".join(
    f'[[trigger]]\nname = "{on}"\non = "{on}"\ntopic = "{topic}"\npython = "server_fns:echo_event"\n'
    for on, topic in [("presence.join", "lobby*"), ("presence.leave", "lobby*"), ("channel.join", "lobby*"),
                      ("channel.leave", "lobby*"), ("connection.open", "*"), ("connection.close", "*")]
)


async def test_presence_channel_and_connection_triggers(tmp_path: Path) -> None:
    cfg = tmp_path / "functions.toml"
    cfg.write_text(f'python_path = ["{Path(__file__).parent}"]\n' + EVENT_TRIGGERS)
    srv = start_server(str(tmp_path), REALTIME_FUNCTIONS_CONFIG=str(cfg))
    try:
        async with open_client(srv, "2.0.0") as audit:
            await audit.join_ok("realtime:audit", {})
            token = make_token("authenticated", sub="bob")
            async with open_client(srv, "1.0.0", apikey=token) as bob:
                await audit.expect(lambda f: f.event == "broadcast" and f.payload.get("event") == "connection.open"
                                   and f.payload["payload"]["sub"] == "bob")
                await bob.join_ok("realtime:lobby", {"presence": {"key": "bob"}})
                await bob.push("realtime:lobby", "presence", {"event": "track", "payload": {"mood": "ok"}})
                joined = await audit.expect(lambda f: f.payload.get("event") == "presence.join")
                assert joined.payload["payload"]["payload"] == {"mood": "ok"}
                assert joined.payload["payload"]["topic"] == "lobby"
                await audit.expect(lambda f: f.payload.get("event") == "channel.join")
                await bob.push("realtime:lobby", "phx_leave", {})
                await audit.expect(lambda f: f.payload.get("event") == "presence.leave")
                await audit.expect(lambda f: f.payload.get("event") == "channel.leave")
            closed = await audit.expect(lambda f: f.payload.get("event") == "connection.close"
                                        and f.payload["payload"]["sub"] == "bob")
            assert closed.payload["payload"]["payload"]["code"] == 1000
    finally:
        srv.stop()
    assert "Traceback" not in srv.log()


async def test_postgres_trigger_fires_once_per_change(tmp_path: Path, pg_cluster: Any) -> None:
    import psycopg

    dbname = "rc_fn_postgres"
    dsn = create_database(pg_cluster, dbname)
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("create table public.orders (id serial primary key, total numeric)")
        db.execute("create publication rc_fn_pub for table public.orders")
    cfg = tmp_path / "functions.toml"
    cfg.write_text(f'python_path = ["{Path(__file__).parent}"]\n'
                   '[[trigger]]\nname = "orders"\non = "postgres"\nschema = "public"\ntable = "orders"\n'
                   'filter = "total=gt.100"\npython = "server_fns:echo_event"\n')
    srv = start_server(str(tmp_path), REALTIME_FUNCTIONS_CONFIG=str(cfg), REALTIME_DATABASE_URL=dsn,
                       REALTIME_PUBLICATION="rc_fn_pub", REALTIME_SLOT_NAME="rc_fn_slot",
                       REALTIME_MESSAGES_SLOT_NAME="rc_fn_messages_slot")
    try:
        await wait_streaming(srv)  # changes committed before the slot exists are not seen
        async with open_client(srv, "2.0.0") as audit:
            await audit.join_ok("realtime:audit", {})
            with psycopg.connect(dsn, autocommit=True) as db:
                for total in (5, 500, 7, 900):
                    db.execute("insert into public.orders (total) values (%s)", (total,))
            first = await audit.expect(lambda f: f.payload.get("event") == "postgres", timeout=20)
            second = await audit.expect(lambda f: f.payload.get("event") == "postgres" and f is not first,
                                        timeout=20)
            records = [g.payload["payload"]["payload"]["record"]["total"] for g in (first, second)]
            assert records == [500, 900]  # the filter kept only totals over 100, in commit order
            assert first.payload["payload"]["event"] == "INSERT"
            assert first.payload["payload"]["topic"] == "public:orders"
    finally:
        srv.stop()
        drop_database(pg_cluster, dbname)  # and its slots (rc_fn_slot, rc_fn_messages_slot)
    assert "Traceback" not in srv.log()


async def wait_streaming(srv: ServerProc, timeout: float = 30.0) -> None:
    import asyncio

    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(timeout):
            while True:
                async with http.get(f"{srv.http_url}/health") as r:
                    if (await r.json()).get("replication") == "streaming":
                        return
                await asyncio.sleep(0.1)  # polling the condition, bounded by the timeout


async def test_a_function_tracks_and_untracks_presence_without_a_socket(tmp_path: Path) -> None:
    cfg = tmp_path / "functions.toml"
    cfg.write_text(f'python_path = ["{Path(__file__).parent}"]\n'
                   '[[trigger]]\nname = "bot"\non = "broadcast"\ntopic = "hall*"\nevent = "summon"\n'
                   'python = "server_fns:bot_presence"\n')
    srv = start_server(str(tmp_path), REALTIME_FUNCTIONS_CONFIG=str(cfg))
    try:
        async with open_client(srv, "2.0.0") as member:
            await member.join_ok("realtime:hall", {"presence": {"enabled": True}})
            await member.broadcast("realtime:hall", "summon", {})
            joined = await member.expect(lambda f: f.event == "presence_diff" and "bot" in f.payload["joins"])
            [meta] = joined.payload["joins"]["bot"]["metas"]
            assert meta["bot"] is True and meta["for"] == "summon" and "phx_ref" in meta
            await member.broadcast("realtime:hall", "summon", {"leave": True})
            await member.expect(lambda f: f.event == "presence_diff" and "bot" in f.payload["leaves"])
    finally:
        srv.stop()
    assert "Traceback" not in srv.log()
