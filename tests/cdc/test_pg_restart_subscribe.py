"""After PostgreSQL restarts, the first new postgres_changes subscription succeeds at once.

The server's connection for subscription checks was opened before the restart and is dead
without knowing it; the check must notice, reconnect and succeed, rather than answer "unable to
connect" and make the client wait for the retry (missing what is committed meanwhile).  This
module has its own cluster, since it restarts it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pgcluster import PgCluster
from support import make_token
from rawclient import V2, event_is, open_client, unique_topic

WAIT = 30.0


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Any]:
    cluster = PgCluster()
    cluster.init()
    cluster.start()
    yield cluster
    cluster.destroy()


def wait_streaming(cdc: Any) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        with psycopg.connect(cdc.dsn, autocommit=True) as conn:
            if conn.execute("select 1 from pg_replication_slots where slot_name = %s and active",
                            (cdc.slot,)).fetchone():
                return
        assert time.monotonic() < deadline, "the server never streamed again after the restart"
        time.sleep(0.05)  # polling a condition, bounded by the deadline


async def subscribe(c: Any, table: str) -> tuple[str, dict[str, Any]]:
    topic = unique_topic("after-restart")
    reply = await c.join(topic, {"postgres_changes": [{"event": "INSERT", "schema": "public", "table": table}]},
                         access_token=make_token("service_role"))
    assert reply.payload["status"] == "ok", reply.value
    return topic, (await c.expect(event_is("system", topic), WAIT)).payload


async def test_first_subscription_after_a_restart_succeeds(cdc: Any, pg_cluster: Any) -> None:
    table = cdc.table("id int primary key")
    async with open_client(cdc.server, V2) as c:
        _, first = await subscribe(c, table)  # the check connection is open now
        assert first["status"] == "ok", first
    cdc.conn.close()
    pg_cluster.restart()
    cdc.conn = psycopg.connect(cdc.dsn, autocommit=True)
    wait_streaming(cdc)
    async with open_client(cdc.server, V2) as c:
        topic, system = await subscribe(c, table)
        assert system["status"] == "ok" and system["message"] == "Subscribed to PostgreSQL", system
        cdc.execute(f"insert into {table} values (1)")
        change = await c.expect(event_is("postgres_changes", topic), WAIT)
    assert change.payload["data"]["record"] == {"id": 1}
