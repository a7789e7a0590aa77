"""A database and a server per test module for private channels, database broadcast and replay
(protocol.md §4.4, §4.7, §4.8, §7.3).

Each module gets its own database on the session's private cluster (``pg_cluster``) with
Supabase's roles (``anon``, ``authenticated``, ``service_role`` BYPASSRLS) and one server pointed
at it with ``REALTIME_INSTALL_AUTH_HELPERS=true`` — so ``auth.uid()``/``auth.jwt()`` used by the
policies below come from the server's opt-in helpers, not from the test.  The server runs its
migrations (``realtime.messages``, ``realtime.send``…); the fixture then installs the policies:

* ``public.rc_members (user_id, topic, extension, mode)`` grants rights row by row: a row
  ``(A, 'room:x', 'broadcast', 'read')`` lets user A read broadcasts of the private ``room:x``.
* read (SELECT) checks ``auth.uid()``, write (INSERT) checks ``(auth.jwt() ->> 'sub')::uuid``,
  both with ``realtime.topic()`` and the ``extension`` column, exactly as §7.3 describes.
* a token carrying ``"banned": true`` loses every read right (claims that "no longer pass").

A module may set ``SERVER_ENV = {...}`` for extra ``REALTIME_*`` settings of its server.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgcluster import create_database, drop_database
from support import ServerProc, make_token, start_server

TESTS_DIR = Path(__file__).resolve().parents[1]
for _helpers in ("integration", "conformance"):  # rawclient.py, peers.py (plain modules)
    if str(TESTS_DIR / _helpers) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR / _helpers))

POLICIES_SQL = """
create table public.rc_members (user_id uuid not null, topic text not null, extension text not null,
                                mode text not null);
grant select on public.rc_members to authenticated;

create policy "rc members read" on realtime.messages for select to authenticated using (
    not coalesce((auth.jwt() ->> 'banned')::boolean, false)
    and exists (select 1 from public.rc_members m
                where m.user_id = auth.uid() and m.topic = realtime.topic()
                  and m.extension = realtime.messages.extension and m.mode = 'read'));

create policy "rc members write" on realtime.messages for insert to authenticated with check (
    exists (select 1 from public.rc_members m
            where m.user_id = (auth.jwt() ->> 'sub')::uuid and m.topic = realtime.topic()
              and m.extension = realtime.messages.extension and m.mode = 'write'));
"""

#: How long the server may take to migrate and start streaming realtime.messages.
READY_TIMEOUT = 30.0

READ, WRITE = "read", "write"
BROADCAST, PRESENCE = "broadcast", "presence"


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)  # polling a condition, bounded by the deadline


def new_user() -> str:
    return str(uuid.uuid4())


def private_topic(prefix: str = "room") -> str:
    """A fresh sub-topic (``room:<hex>``), so tests never see each other's rights or traffic."""
    return f"{prefix}:{uuid.uuid4().hex[:10]}"


@dataclass
class PrivateDb:
    """One module's database and server, with helpers to grant rights and mint user tokens."""

    dsn: str
    name: str
    conn: psycopg.Connection[Any]
    server: ServerProc

    def execute(self, sql: str, params: Any = None) -> None:
        self.conn.execute(sql, params)

    def fetchall(self, sql: str, params: Any = None) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    def grant(self, user: str, topic: str, *rights: tuple[str, str]) -> None:
        """``grant(A, t, (BROADCAST, READ), (PRESENCE, WRITE))``."""
        for extension, mode in rights:
            self.execute("insert into public.rc_members values (%s, %s, %s, %s)", (user, topic, extension, mode))

    def revoke(self, user: str, topic: str, *rights: tuple[str, str]) -> None:
        for extension, mode in rights:
            self.execute(
                "delete from public.rc_members where user_id = %s and topic = %s and extension = %s and mode = %s",
                (user, topic, extension, mode),
            )

    def token(self, user: str, role: str = "authenticated", **claims: Any) -> str:
        """A fresh user JWT; ``jti`` makes every token distinct, so a refresh with the same
        claims is never "the current token" (which §3.9 ignores)."""
        return make_token(role, sub=user, secret=self.server.secret, jti=uuid.uuid4().hex, **claims)


def _module_suffix(request: pytest.FixtureRequest) -> str:
    name = request.module.__name__.rsplit(".", 1)[-1]
    return re.sub(r"[^a-z0-9_]", "_", name.lower())[:36]


async def _wait_db_broadcast(server: ServerProc, conn: psycopg.Connection[Any], timeout: float) -> None:
    """The exact condition database-broadcast tests need: a row sent with ``realtime.send``
    reaches a subscriber.  Called once the feed's slot exists: the slot keeps every row committed
    from then on, so one probe suffices."""
    from rawclient import V2, event_is, open_client, unique_topic

    topic = unique_topic("probe")
    async with open_client(server, V2) as c:
        await c.join_ok(topic, {})
        conn.execute("select realtime.send('{}'::jsonb, 'probe', %s, false)", (topic[len("realtime:"):],))
        await c.expect(event_is("broadcast", topic), timeout)


@pytest.fixture(scope="module")
def pdb(request: pytest.FixtureRequest, pg_cluster: Any,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDb]:
    suffix = _module_suffix(request)
    dbname = f"rc_priv_{suffix}"
    dsn = create_database(pg_cluster, dbname)
    extra: dict[str, str] = dict(getattr(request.module, "SERVER_ENV", {}))
    messages_slot = f"rc_mslot_{suffix}"
    server = start_server(
        str(tmp_path_factory.mktemp(f"priv-{suffix}")),
        REALTIME_DATABASE_URL=dsn,
        REALTIME_INSTALL_AUTH_HELPERS="true",
        REALTIME_PUBLICATION=f"rc_pub_{suffix}",
        REALTIME_SLOT_NAME=f"rc_slot_{suffix}",
        REALTIME_MESSAGES_PUBLICATION=f"rc_mpub_{suffix}",
        REALTIME_MESSAGES_SLOT_NAME=messages_slot,
        **extra,
    )
    conn = psycopg.connect(dsn, autocommit=True, options="-c TimeZone=UTC")
    try:
        # Migrations, then the opt-in auth helpers (the policies need both).
        wait_until(
            lambda: conn.execute(
                "select pg_catalog.to_regclass('realtime.messages') is not null"
                " and pg_catalog.to_regprocedure('auth.uid()') is not null"
                " and pg_catalog.to_regprocedure('auth.jwt()') is not null"
            ).fetchone()[0],  # type: ignore[index]
            READY_TIMEOUT,
            f"the server's migrations (log:\n{server.log()})",
        )
        conn.execute(POLICIES_SQL)
        # Rows committed before the feed's slot exists are never streamed; after that, they are.
        wait_until(
            lambda: conn.execute("select 1 from pg_replication_slots where slot_name = %s", (messages_slot,)).fetchone(),
            READY_TIMEOUT,
            f"slot {messages_slot} (log:\n{server.log()})",
        )
        try:
            asyncio.run(_wait_db_broadcast(server, conn, READY_TIMEOUT))
        except AssertionError as exc:
            raise AssertionError(f"database broadcast never worked: {exc}\nserver log:\n{server.log()}") from None
        yield PrivateDb(dsn=dsn, name=dbname, conn=conn, server=server)
    finally:
        server.stop()
        conn.close()
        drop_database(pg_cluster, dbname)
