"""Row Level Security for a transaction's changes, per claims cohort (protocol.md §6.6).

For the changes of RLS tables (``router.needs_rls``), each table's changes are judged **once
for all the cohorts together** (rls.py): each change's own images — the new one, and the old
one when the change carries the whole old row — are evaluated against the table's policies as
each cohort's role and claims, once the transaction is visible in a new snapshot.  Images
lacking a column's value (unchanged TOAST without replica identity full) fall back to the row's
current state, after the same wait.  The result per change is a ``router.Seen``: the cohorts
that may see it, and those that may also see its old image.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from .. import tracing
from .. import metrics
from . import router
from .bindings import Binding
from .record import Row
from .rls import RlsChecker
from .types import TableInfo, Transaction

#: per matching fan of a change, its bindings that match
Matched = list[tuple[router.Fan, list[Binding]]]
Prepared = Sequence[tuple[Row, Matched]]


class Visibility:
    """``mode``: "batched" (one round trip per table per transaction for every cohort) or
    "per_subscriber" (one query per subscriber per change on the current row, as Supabase does;
    kept only so bench/ can measure the difference in the same run)."""

    def __init__(self, rls: RlsChecker, mode: str = "batched") -> None:
        self.rls = rls
        self.mode = mode

    async def check(self, conn: psycopg.AsyncConnection[Any], txn: Transaction,
                    prepared: Prepared) -> dict[int, router.Seen]:
        """Per change index (RLS tables only), the cohorts that may see it, and those that may
        see its old image too — one round trip per table."""
        by_table: dict[int, list[int]] = {}
        for idx, (row, _) in enumerate(prepared):
            if router.needs_rls(row):
                by_table.setdefault(row.info.relid, []).append(idx)
        result: dict[int, router.Seen] = {}
        for indexes in by_table.values():
            info = prepared[indexes[0]][0].info
            cohorts: dict[str, Mapping[str, Any]] = {}
            for i in indexes:
                for cohort, claims in router.cohorts(prepared[i][1]).items():
                    cohorts.setdefault(cohort, claims)
            for i in indexes:
                result[i] = router.Seen(set(), set())
            started = time.perf_counter()
            with tracing.span("realtime.cdc.rls", table=f"{info.schema}.{info.name}", cohorts=len(cohorts),
                              rows=len(indexes), mode=self.mode):
                if self.mode == "per_subscriber":
                    await self._check_each(conn, txn, info, prepared, indexes, result)
                else:
                    await self._check_images(conn, txn, info, prepared, indexes, cohorts, result)
            metrics.rls_checked(len(indexes), started)
        return result

    async def _check_images(self, conn: psycopg.AsyncConnection[Any], txn: Transaction, info: TableInfo,
                            prepared: Prepared, indexes: list[int], cohorts: Mapping[str, Mapping[str, Any]],
                            result: dict[int, router.Seen]) -> None:
        """Judge each change's own images (new, and old when the change carries the whole old
        row); images lacking a column's value fall back to the row's current state."""
        keys = list(cohorts)
        claims = [cohorts[k] for k in keys]
        table_columns = {c.name for c in info.columns}
        groups: dict[tuple[str, ...], list[tuple[int, str, list[str | None]]]] = {}
        fallback: list[int] = []
        for i in indexes:
            row = prepared[i][0]
            columns = row.image_columns()
            new = row.image("new")
            if new is None or not table_columns <= set(columns):
                fallback.append(i)
                continue
            group = groups.setdefault(columns, [])
            group.append((i, "new", new))
            old = row.image("old") if row.kind == "UPDATE" and row.change.old_kind == "O" else None
            if old is not None:
                group.append((i, "old", old))
        for columns, entries in groups.items():
            seen = await self.rls.visible_images(conn, info, txn.xid, columns, [e[2] for e in entries], claims)
            for cohort, admitted in zip(keys, seen, strict=True):
                for r in admitted:
                    i, which, _ = entries[r]
                    (result[i].new if which == "new" else result[i].old).add(cohort)
        if fallback:
            seen = await self.rls.visible(conn, info, [prepared[i][0].pk_text() for i in fallback], claims, txn.xid)
            for cohort, admitted in zip(keys, seen, strict=True):
                for r in admitted:
                    result[fallback[r]].new.add(cohort)

    async def _check_each(self, conn: psycopg.AsyncConnection[Any], txn: Transaction, info: TableInfo,
                          prepared: Prepared, indexes: list[int], result: dict[int, router.Seen]) -> None:
        """The baseline: one visibility query per subscriber (socket) per change, on the current
        row (Supabase's way; the old image is not judged)."""
        for i in indexes:
            row, matched = prepared[i]
            for fan, _ in matched:
                for cohort, (claims, peers) in fan.cohorts.items():
                    for _peer in peers:
                        seen = await self.rls.visible(conn, info, [row.pk_text()], [claims], txn.xid)
                        if seen[0]:
                            result[i].new.add(cohort)
                            result[i].old.add(cohort)
