"""Catching a channel up where the feed registers it (protocol.md §4.10, §6.10): the retained
changes after its offset (``replay``), or the rows its ``snapshot: true`` bindings match now
(``read_snapshot``).  Both run under the feed's route lock, right after the channel's
subscriptions were registered, so nothing routed later reaches the channel before them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg

from .. import errors
from ..protocol.codec import Message
from . import pgoutput, router, snapshot
from .bindings import Sub
from .record import Row
from .retention import format_offset
from .subscriptions import ChannelSubs
from .visibility import Matched

if TYPE_CHECKING:
    from .changes import PostgresChanges

__all__ = ["GAP_UNKNOWN", "SNAPSHOT_MAX_ROWS", "read_snapshot", "replay"]

log = logging.getLogger(__name__)

#: the largest snapshot a channel may read (REALTIME_SNAPSHOT_MAX_ROWS)
SNAPSHOT_MAX_ROWS = 10_000
GAP_UNKNOWN = "ResumeGap: the changes after the given offset are no longer retained (how many is unknown)"


class _TooLarge(Exception):
    """A snapshot with more rows than ``snapshot_max_rows``."""


async def replay(feed: PostgresChanges, ch: ChannelSubs) -> bool:
    """Route the retained changes after the channel's offset to it; True when some may have
    been dropped (the gap message is sent first)."""
    retention, pos = feed.retention, ch.resume_from
    if retention is None or pos is None:
        return False
    gap = retention.has_gap(pos)
    if gap:
        payload = {"extension": "postgres_changes", "status": "ok", "channel": ch.topic.removeprefix("realtime:"),
                   "message": GAP_UNKNOWN, "gap": {"missed": None, "retained_from": retention.first_offset()}}
        ch.peer.send(Message(ch.topic, "system", payload, ref=None, join_ref=ch.join_ref))
    own: dict[tuple[str, str], list[Sub]] = {}
    for sub in ch.subs:
        own.setdefault(sub.table_key, []).append(sub)
    fans = {table: router.fans(subs) for table, subs in own.items()}
    try:
        for txn, first in retention.after(pos):
            work = router.work(txn, fans.get, first)
            if work:
                async with feed._route_conn.use() as conn:
                    await feed._route(conn, txn, work, replayed=True)
    except (psycopg.OperationalError, OSError) as exc:
        log.error("postgres_changes: database error while resuming %s: %s", ch.topic, exc)
        payload = {"extension": "postgres_changes", "status": "ok", "channel": ch.topic.removeprefix("realtime:"),
                   "message": GAP_UNKNOWN, "gap": {"missed": None, "retained_from": None}}
        ch.peer.send(Message(ch.topic, "system", payload, ref=None, join_ref=ch.join_ref))
        return True
    return gap


async def read_snapshot(feed: PostgresChanges, ch: ChannelSubs) -> None:
    """§6.10: the rows matching the channel's snapshot bindings now, as INSERTs, then the
    ``Snapshot complete`` message; from then on the transactions the snapshot contains are
    not sent to it.  Runs under the route lock, right after the channel was registered."""
    subs = [sub for sub in ch.subs if sub.binding.snapshot]
    role = subs[0].role
    channel = ch.topic.removeprefix("realtime:")
    by_table: dict[tuple[str, str], list[Sub]] = {}
    for sub in subs:
        by_table.setdefault(sub.table_key, []).append(sub)
    found: list[tuple[Row, Matched, frozenset[str]]] = []
    try:
        async with feed._route_conn.use() as conn:
            async with conn.transaction(force_rollback=True):
                seen, at_us = await snapshot.begin(conn, role, ch.claims)
                for (schema, table), table_subs in by_table.items():
                    info = await feed.cache.table_info(conn, schema, table)
                    if info is None:
                        continue
                    allowed = await feed.cache.selectable_columns(conn, role, info.relid)
                    fans = router.fans(table_subs)
                    async for change in snapshot.rows(conn, info, allowed):
                        row = Row(change, info)
                        matched = router.match(row, fans)
                        if not matched:
                            continue
                        found.append((row, matched, allowed))
                        if len(found) > feed.snapshot_max_rows:
                            raise _TooLarge
    except _TooLarge:
        payload = {"extension": "postgres_changes", "status": "error", "channel": channel,
                   "message": errors.SnapshotTooLarge(feed.snapshot_max_rows).message}
        ch.peer.send(Message(ch.topic, "system", payload, ref=None, join_ref=ch.join_ref))
        return
    except (psycopg.Error, OSError) as exc:
        log.error("postgres_changes: could not read the snapshot of %s: %s", ch.topic, exc)
        payload = {"extension": "postgres_changes", "status": "error", "channel": channel,
                   "message": errors.SnapshotFailed().message}
        ch.peer.send(Message(ch.topic, "system", payload, ref=None, join_ref=ch.join_ref))
        return
    commit_ts = pgoutput.commit_timestamp(at_us)
    for row, matched, allowed in found:
        feed._deliver(row, router.plan(row, matched, None, {role: allowed}), commit_ts, None)
    for sub in subs:
        sub.seen = seen
    for sub in ch.subs:
        feed.subscriptions.invalidate(sub.table_key)
    offset = (format_offset(feed.retention.last_lsn, 0xFFFFFFFF)
              if feed.retention is not None and feed.retention.last_lsn else None)
    done: dict[str, Any] = {"extension": "postgres_changes", "status": "ok", "channel": channel,
                            "message": f"Snapshot complete: {len(found)} rows",
                            "snapshot": {"rows": len(found), "offset": offset}}
    ch.peer.send(Message(ch.topic, "system", done, ref=None, join_ref=ch.join_ref))
