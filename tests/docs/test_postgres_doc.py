"""docs/postgres.md works verbatim on a fresh, plain PostgreSQL.

A new cluster starts with ``wal_level = replica`` (a stock server's default), the ```sql blocks of
the page run through ``psql`` exactly as written, in order — the set-up blocks twice, since the
page says they may be re-run — with the restart the page asks for after step 1. Then a server
logging in as the page's ``realtime`` role must deliver a filtered INSERT to a subscriber, and the
private-channel example (policies plus trigger) must deliver a row change to a room member.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgcluster import PgCluster, database_dsn
from support import ServerProc, make_token, start_server

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from rawclient import V2, event_is, open_client, system_msg  # noqa: E402

PAGE = ROOT / "docs" / "postgres.md"
START_HEADING = "### 5. Start the server"
DB = "app"
READY_TIMEOUT = 60.0


def sql_blocks(text: str) -> list[str]:
    return re.findall(r"^```sql\n(.*?)^```", text, re.M | re.S)


def page_blocks() -> tuple[list[str], list[str]]:
    """(blocks to run before the server's first start, blocks that need the server's schema)."""
    text = PAGE.read_text(encoding="utf-8")
    before, _, after = text.partition(START_HEADING)
    assert after, f"{START_HEADING!r} not found in docs/postgres.md"
    return sql_blocks(before), sql_blocks(after)


def psql(cluster: PgCluster, dsn: str, sql: str, tmp: Path) -> None:
    script = tmp / f"block-{uuid.uuid4().hex}.sql"
    script.write_text(sql, encoding="utf-8")
    run = subprocess.run([str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(script)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"psql failed on:\n{sql}\n{run.stderr}"


def wait_for(cond: Any, what: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)  # polling a condition, bounded by the deadline


@pytest.fixture(scope="module")
def fresh_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster(extra_conf={"wal_level": "replica"})
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def documented_server(fresh_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, str]]:
    tmp = tmp_path_factory.mktemp("pgdoc")
    with psycopg.connect(fresh_cluster.dsn, autocommit=True) as admin:
        assert admin.execute("show wal_level").fetchone() == ("replica",)
        admin.execute(f'create database "{DB}"')
    dsn = database_dsn(fresh_cluster, DB)
    before, _ = page_blocks()
    assert len(before) >= 4, "expected the set-up steps as sql blocks"
    for round_ in range(2):
        for i, block in enumerate(before):
            psql(fresh_cluster, dsn, block, tmp)
            if i == 0 and round_ == 0:
                fresh_cluster.restart()  # "Then restart PostgreSQL"
                with psycopg.connect(dsn) as conn:
                    assert conn.execute("select current_setting('wal_level')").fetchone() == ("logical",)
    url = f"postgresql://realtime:change-me@127.0.0.1:{fresh_cluster.port}/{DB}"
    server = start_server(str(tmp), REALTIME_DATABASE_URL=url, REALTIME_INSTALL_AUTH_HELPERS="true")
    try:
        yield server, dsn
    finally:
        server.stop()


async def test_documented_setup_delivers_a_filtered_insert(documented_server: tuple[ServerProc, str]) -> None:
    server, dsn = documented_server
    topic = f"realtime:db-{uuid.uuid4().hex[:8]}"
    binding = {"event": "INSERT", "schema": "public", "table": "messages", "filter": "room_id=eq.7"}
    async with open_client(server, V2) as c:
        reply = await c.join(topic, {"postgres_changes": [binding]})
        assert reply.payload["status"] == "ok", reply.value
        # the subscription is retried while the stream starts; wait for the success message
        deadline = time.monotonic() + READY_TIMEOUT
        errors: list[str] = []
        while True:
            try:
                msg = await c.expect(system_msg(topic), timeout=max(0.1, deadline - time.monotonic()))
            except AssertionError as exc:
                raise AssertionError(f"never subscribed; system errors: {errors}") from exc
            if msg.payload["status"] == "ok":
                assert msg.payload["message"] == "Subscribed to PostgreSQL"
                break
            errors.append(msg.payload["message"])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into public.messages (room_id, body) values (8, 'other room')")
            conn.execute("insert into public.messages (room_id, body) values (7, 'hello')")
        change = await c.expect(event_is("postgres_changes", topic), timeout=15)
        # commit order: had room 8 passed the filter, it would have arrived first
        data = change.payload["data"]
        assert data["type"] == "INSERT" and data["table"] == "messages"
        assert data["record"]["room_id"] == 7 and data["record"]["body"] == "hello"
        assert "Traceback" not in server.log()


async def test_private_channel_example_reaches_a_room_member(
    documented_server: tuple[ServerProc, str], fresh_cluster: PgCluster, tmp_path: Path
) -> None:
    server, dsn = documented_server

    def schema_installed() -> bool:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("select to_regprocedure('realtime.broadcast_changes(text,text,text,text,text,record,record,text)'),"
                               " to_regprocedure('auth.uid()')").fetchone()
            return row is not None and None not in row

    wait_for(schema_installed, "the server to install realtime.* and auth.uid()")
    _, after = page_blocks()
    assert after, "expected the private-channel example as an sql block"
    for block in after:
        psql(fresh_cluster, dsn, block, tmp_path)

    member = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into public.room_members (room, user_id) values (7, %s)", (member,))
    token = make_token("authenticated", sub=member)
    async with open_client(server, V2) as c:
        reply = await c.join("realtime:room:7", {"private": True}, access_token=token)
        assert reply.payload["status"] == "ok", reply.value
        outsider = await c.join("realtime:room:8", {"private": True}, access_token=token)
        assert outsider.payload["response"]["reason"].startswith("Unauthorized: "), outsider.value
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into public.messages (room_id, body) values (7, 'for members')")
        frame = await c.expect(event_is("broadcast", "realtime:room:7"), timeout=15)
        view = frame.broadcast_view()
        assert view["event"] == "INSERT"
        assert view["payload"]["record"]["body"] == "for members"
        assert view["payload"]["operation"] == "INSERT"
