"""Module-scoped PostgreSQL fixtures for the postgres_changes tests (protocol.md §6).

Each test module gets its own database on the session's private cluster (``pg_cluster``), its own
publication and replication slot, and one server (``realtime-channels serve``) pointed at that
database.  Roles follow Supabase's convention (``anon``, ``authenticated`` NOLOGIN, ``service_role``
BYPASSRLS); ``auth.uid()``/``auth.jwt()`` come from ``realtime_channels.cdc.sql``.

Tests create their own tables through :meth:`CdcDb.table` (a fresh name each time) so nothing a
previous test wrote can ever reach a later test's channel.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgcluster import create_database, drop_database, install_auth_helpers
from support import start_server

TESTS_DIR = Path(__file__).resolve().parents[1]
for _helpers in ("integration", "conformance"):  # rawclient.py, peers.py (plain modules)
    if str(TESTS_DIR / _helpers) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR / _helpers))


GRANTS_SQL = """
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant select on tables to anon, authenticated, service_role;
"""

#: How long the server may take to create its publication and start streaming.
READY_TIMEOUT = 30.0


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)  # polling a condition, bounded by the deadline


@dataclass
class CdcDb:
    """One test module's database, server and helpers."""

    dsn: str
    dbname: str
    publication: str
    slot: str
    conn: psycopg.Connection[Any]
    server: Any = None
    made: list[str] = field(default_factory=list)

    def execute(self, sql: str, params: Any = None) -> None:
        self.conn.execute(sql, params)

    def fetchone(self, sql: str, params: Any = None) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        assert row is not None
        return row

    def table(
        self,
        columns: str,
        *,
        prefix: str = "t",
        schema: str = "public",
        identity_full: bool = False,
        rls: bool = False,
        publish: bool = True,
        grant: bool = True,
    ) -> str:
        """Create a fresh table ``<schema>.<prefix>_<hex>`` and (by default) add it to the publication.

        Returns the bare table name."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        qualified = f'"{schema}"."{name}"'
        self.execute(f"create table {qualified} ({columns})")
        if identity_full:
            self.execute(f"alter table {qualified} replica identity full")
        if rls:
            self.execute(f"alter table {qualified} enable row level security")
        if grant:
            self.execute(f"grant select on {qualified} to anon, authenticated, service_role")
        if publish:
            self.execute(f"alter publication {self.publication} add table {qualified}")
        self.made.append(qualified)
        return name

    def db_now(self) -> Any:
        return self.fetchone("select clock_timestamp()")[0]


def _module_suffix(request: pytest.FixtureRequest) -> str:
    name = request.module.__name__.rsplit(".", 1)[-1]
    return re.sub(r"[^a-z0-9_]", "_", name.lower())[:40]


async def _wait_subscribable(server: Any, table: str, timeout: float) -> None:
    """Join a channel with a binding on ``table`` until the server answers ``Subscribed to
    PostgreSQL``: the exact condition every test needs (a subscription made before the reader
    streams gets a transient error, retried only after 5 s, protocol.md §6.3)."""
    from rawclient import V2, event_is, open_client, unique_topic

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    async with open_client(server, V2) as c:
        while loop.time() < deadline:
            topic = unique_topic("probe")
            await c.join_ok(topic, {"postgres_changes": [{"event": "*", "schema": "public", "table": table}]})
            frame = await c.expect(event_is("system", topic), timeout)
            last = frame.payload
            if last.get("status") == "ok":
                return
            await c.push(topic, "phx_leave", {})
            await asyncio.sleep(0.1)  # polling a condition, bounded by the deadline
    raise AssertionError(f"postgres_changes subscriptions never succeeded; last system message: {last}")


@pytest.fixture(scope="module")
def cdc(request: pytest.FixtureRequest, pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CdcDb]:
    """A database with Supabase's roles, the auth helpers and a server streaming from it."""
    suffix = _module_suffix(request)
    dbname = f"rc_{suffix}"
    publication = f"rc_pub_{suffix}"[:63]
    slot = f"rc_slot_{suffix}"[:63]
    dsn = create_database(pg_cluster, dbname)
    install_auth_helpers(dsn)
    conn = psycopg.connect(dsn, autocommit=True, options="-c TimeZone=UTC -c DateStyle=ISO")
    conn.execute(GRANTS_SQL)
    db = CdcDb(dsn=dsn, dbname=dbname, publication=publication, slot=slot, conn=conn)
    server = start_server(
        str(tmp_path_factory.mktemp(f"cdc-{suffix}")),
        REALTIME_DATABASE_URL=dsn,
        REALTIME_PUBLICATION=publication,
        REALTIME_SLOT_NAME=slot,
    )
    db.server = server
    try:
        # The server creates the (empty) publication and its permanent slot, then streams: a
        # subscription made before that gets a transient error and a 5 s retry (protocol.md §6.3).
        _wait(
            lambda: conn.execute("select 1 from pg_publication where pubname = %s", (publication,)).fetchone()
            is not None,
            READY_TIMEOUT,
            f"publication {publication} (server log:\n{server.log()})",
        )
        _wait(
            lambda: conn.execute(
                "select 1 from pg_replication_slots where slot_name = %s and active", (slot,)
            ).fetchone()
            is not None,
            READY_TIMEOUT,
            f"slot {slot} to be streamed (server log:\n{server.log()})",
        )
        probe = db.table("id int primary key", prefix="probe")
        asyncio.run(_wait_subscribable(server, probe, READY_TIMEOUT))
        yield db
    finally:
        server.stop()
        conn.close()
        drop_database(pg_cluster, dbname)
