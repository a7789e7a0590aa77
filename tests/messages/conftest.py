"""Databases for the ``realtime.messages`` tests (protocol.md §4.7, §4.8, §7.3).

Each test module gets its own database on the session's private cluster (``pg_cluster``) with
Supabase's roles and the ``auth.uid()``/``auth.jwt()`` helpers of ``cdc.sql``; ``fresh_db`` makes
an extra, empty database for a single test.  Replication slots a test leaves behind are dropped
with its database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from pgcluster import create_database, drop_database, install_auth_helpers


@dataclass
class Db:
    name: str
    dsn: str

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    async def aconnect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)


def create_db(cluster: Any, name: str) -> Db:
    """A new database with Supabase's roles and the auth helpers."""
    db = Db(name=name, dsn=create_database(cluster, name))
    install_auth_helpers(db.dsn)
    return db


@pytest.fixture(scope="module")
def msg_db(request: pytest.FixtureRequest, pg_cluster: Any) -> Iterator[Db]:
    """This module's database: roles and auth helpers, no realtime objects yet."""
    suffix = re.sub(r"[^a-z0-9_]", "_", request.module.__name__.rsplit(".", 1)[-1].lower())[:40]
    db = create_db(pg_cluster, f"rc_msg_{suffix}")
    yield db
    drop_database(pg_cluster, db.name)


@pytest.fixture
def fresh_db(pg_cluster: Any) -> Iterator[Db]:
    """An extra empty database (roles and auth helpers) for one test."""
    db = create_db(pg_cluster, f"rc_fresh_{uuid.uuid4().hex[:10]}")
    yield db
    drop_database(pg_cluster, db.name)
