"""Databases for the ``realtime.messages`` tests (protocol.md §4.7, §4.8, §7.3).

Each test module gets its own database on the session's private cluster (``pg_cluster``) with
Supabase's roles and the ``auth.uid()``/``auth.jwt()`` helpers of ``cdc.sql``; ``fresh_db`` makes
an extra, empty database for a single test.  Replication slots a test leaves behind are dropped
with its database.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest


#: The roles every Supabase database has (protocol.md §7.2).  Members of the login role's
#: switchable roles: the cluster's superuser may SET ROLE to any of them.
ROLES_SQL = """
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;
end
$$;
"""


@dataclass
class Db:
    name: str
    dsn: str

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    async def aconnect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)  # polling a condition, bounded by the deadline


async def _install_auth_helpers(dsn: str) -> None:
    from realtime_channels.cdc.sql import install_auth_helpers

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await install_auth_helpers(conn)


def create_db(cluster: Any, name: str, *, auth_helpers: bool = True) -> Db:
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
        admin.execute(f'create database "{name}"')
        admin.execute(ROLES_SQL)
    db = Db(name=name, dsn=cluster.dsn.rsplit("/", 1)[0] + f"/{name}")
    if auth_helpers:
        asyncio.run(_install_auth_helpers(db.dsn))
    return db


def drop_db(cluster: Any, db: Db) -> None:
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        _wait(
            lambda: admin.execute(
                "select 1 from pg_replication_slots where database = %s and active", (db.name,)
            ).fetchone() is None,
            15,
            f"replication slots of {db.name} to be released",
        )
        admin.execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s", (db.name,)
        )
        admin.execute(f'drop database if exists "{db.name}" with (force)')


@pytest.fixture(scope="module")
def msg_db(request: pytest.FixtureRequest, pg_cluster: Any) -> Iterator[Db]:
    """This module's database: roles and auth helpers, no realtime objects yet."""
    suffix = re.sub(r"[^a-z0-9_]", "_", request.module.__name__.rsplit(".", 1)[-1].lower())[:40]
    db = create_db(pg_cluster, f"rc_msg_{suffix}")
    yield db
    drop_db(pg_cluster, db)


@pytest.fixture
def fresh_db(pg_cluster: Any) -> Iterator[Db]:
    """An extra empty database (roles and auth helpers) for one test."""
    db = create_db(pg_cluster, f"rc_fresh_{uuid.uuid4().hex[:10]}")
    yield db
    drop_db(pg_cluster, db)
