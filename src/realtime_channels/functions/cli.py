"""``realtime-channels functions dlq list | replay [--id ID ...]``.

The dead-letter list is only reachable from another process when it is durable, i.e. when the
server runs with ``REALTIME_DATABASE_URL``: these commands read and update
``realtime.rc_function_events`` directly.  A replayed row is marked ``replay``; the running
server adopts it on its next poll (``[queue].poll_interval``, 2 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import orjson
import psycopg

from .store import TABLE, Delivery, PgStore

__all__ = ["add_functions_commands"]

NO_DATABASE = (
    "error: no REALTIME_DATABASE_URL (or --database-url) is set.\n"
    "Without a database the dead-letter list lives in memory inside the server process and\n"
    "cannot be read from here; configure REALTIME_DATABASE_URL to make the queue durable."
)


def add_functions_commands(subparsers: Any) -> None:
    """Register ``functions dlq list|replay`` on the main parser's sub-parsers."""
    fp = subparsers.add_parser("functions", help="functions triggered by realtime events")
    fsub = fp.add_subparsers(dest="functions_command", required=True)
    dlq = fsub.add_parser("dlq", help="the dead-letter list of failed deliveries")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)

    lp = dsub.add_parser("list", help="show dead-lettered deliveries")
    lp.add_argument("--database-url", dest="database_url", help="PostgreSQL URL (REALTIME_DATABASE_URL)")
    lp.add_argument("--json", action="store_true", help="one JSON object per line, with the event")
    lp.set_defaults(func=cmd_dlq_list)

    rp = dsub.add_parser("replay", help="queue dead letters again (all, or the given ids)")
    rp.add_argument("--id", dest="ids", action="append", metavar="ID", help="a dead letter's id (repeatable)")
    rp.add_argument("--database-url", dest="database_url", help="PostgreSQL URL (REALTIME_DATABASE_URL)")
    rp.set_defaults(func=cmd_dlq_replay)


def _database_url(args: argparse.Namespace) -> str | None:
    url = getattr(args, "database_url", None) or os.environ.get("REALTIME_DATABASE_URL")
    return url or None


async def _list(url: str) -> list[Delivery] | None:
    store = PgStore(url)
    try:
        if not await store.table_exists():
            return None
        return await store.dead_list()
    finally:
        await store.close()


async def _replay(url: str, ids: list[str] | None) -> list[Delivery] | None:
    store = PgStore(url)
    try:
        if not await store.table_exists():
            return None
        return await store.revive(ids, "replay")
    finally:
        await store.close()


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except (psycopg.Error, OSError) as exc:
        print(f"error: cannot use the database: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


def cmd_dlq_list(args: argparse.Namespace) -> int:
    url = _database_url(args)
    if url is None:
        print(NO_DATABASE, file=sys.stderr)
        return 2
    rows = _run(_list(url))
    if rows is None:
        print(f"no {TABLE} table: the server has not run with functions on this database")
        return 0
    if args.json:
        for d in rows:
            print(orjson.dumps(d.describe()).decode())
        return 0
    if not rows:
        print("the dead-letter list is empty")
        return 0
    print(f"{'id':36}  {'trigger':20}  {'topic':24}  {'attempts':>8}  last error")
    for d in rows:
        print(f"{d.id:36}  {d.trigger:20}  {d.topic:24}  {d.attempts:>8}  {d.last_error or ''}")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    url = _database_url(args)
    if url is None:
        print(NO_DATABASE, file=sys.stderr)
        return 2
    ids: list[str] | None = args.ids
    rows = _run(_replay(url, ids))
    if rows is None:
        print(f"no {TABLE} table: the server has not run with functions on this database")
        return 1
    found = {d.id for d in rows}
    for missing in [i for i in ids or () if i not in found]:
        print(f"not in the dead-letter list: {missing}", file=sys.stderr)
    print(f"re-queued {len(rows)} event(s); the running server delivers them after its next poll")
    return 0 if ids is None or len(found) == len(set(ids)) else 1
