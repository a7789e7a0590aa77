"""What routing did with one change for each traced channel (``GET /api/trace``, docs/explain.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..tracebus import TraceBus
from . import router
from .record import Row
from .types import Transaction
from .visibility import Matched

__all__ = ["trace_change"]


def trace_change(trace: TraceBus, txn: Transaction, row: Row, fans: Sequence[router.Fan], matched: Matched,
                  seen: router.Seen | None) -> None:
    """What routing does with ``row`` for each traced channel: written, or skipped and why
    (event, filter, a snapshot that contains it, RLS).  Sockets and reasons, no values."""
    hit = {id(fan) for fan, _ in matched}
    by_topic: dict[str, dict[str, list[Any]]] = {}
    for fan in fans:
        sub_topic = fan.topic.removeprefix("realtime:")
        if not trace.watching(sub_topic):
            continue
        out = by_topic.setdefault(sub_topic, {"written": [], "skipped": []})
        why: str | None = None
        if id(fan) not in hit:
            if fan.seen is not None and fan.seen.covers(txn):
                why = "the channel's snapshot already contains this change"
            elif not any(s.binding.event in ("*", row.kind) for s in fan.subs):
                why = f"event: the bindings do not listen to {row.kind}"
            else:
                why = "filter: the row does not match the binding's filter"
        for cohort, (_claims, peers) in fan.cohorts.items():
            reason = why
            if reason is None and seen is not None and cohort not in seen.new:
                reason = f"RLS: the policies of {row.info.schema}.{row.info.name} hide the row from role {fan.role}"
            for peer in peers:
                socket = getattr(peer, "conn_id", id(peer))
                if reason is None:
                    out["written"].append(socket)
                else:
                    out["skipped"].append({"socket": socket, "why": reason})
    for sub_topic, out in by_topic.items():
        trace.emit(sub_topic, {"kind": "postgres_changes", "schema": row.info.schema, "table": row.info.name,
                               "type": row.kind, "commit_lsn": f"{txn.commit_lsn:X}", **out})
