"""Batched Row Level Security visibility per claims cohort (protocol.md §6.6; design.md §3
"RLS"; postgres-cdc.md Q4 "D").

The replication role receives every published row whatever its grants or policies, so we must
decide who may see each INSERT/UPDATE. Supabase runs one ``exists`` query per subscriber per
change (about 3k checks/s), against the row as the table holds it when the query runs. Here
subscribers with identical claims form one *cohort*, and a whole batch of changes to one table
is checked for all cohorts in ONE call:

* ``visible_images`` (the normal path) — ``realtime.rc_visible_images`` evaluates the table's
  policies over the row images the changes carry (the WAL values), after waiting until the
  changes' transaction is visible to new snapshots.  A row reassigned, changed or deleted
  right after a change is judged as it was in that change.
* ``visible`` (the fallback, and Supabase's semantics) — ``realtime.rc_visible_batch`` looks the
  keys up in the table as it is now, after the same wait.  Used for images that lack a column's
  value (an unchanged TOAST value without replica identity full, a generated column), and by
  the per-subscriber benchmark baseline.

DELETEs are not checked here: protocol.md §6.6 delivers them without an RLS check, reduced to
their key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from .catalog import TableInfo

__all__ = ["RlsChecker", "cohort_key"]

_log = logging.getLogger(__name__)
_MAX_LOGGED: Final = 1024
# A NUL character as orjson escapes it (an escaped backslash before "u0000" is not one).
_JSON_NUL: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

_CALL: Final = (
    "select cohort, visible, error from realtime.rc_visible_batch("
    "%s::oid::regclass, %s::text[], %s::text[], %s::jsonb, %s::bigint)"
)
_CALL_IMAGES: Final = (
    "select cohort, visible, error from realtime.rc_visible_images("
    "%s::oid::regclass, %s::bigint, %s::text[], %s::text[], %s::jsonb)"
)


def _mapping_as_dict(value: Any) -> Any:
    # orjson serialises dict only; claims decoded from a JWT are dicts, but a caller may hold
    # any Mapping (e.g. a read-only view).
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"claims value of type {type(value).__name__} is not JSON")


def cohort_key(claims: Mapping[str, Any]) -> str:
    """Canonical JSON of ``claims`` (keys sorted at every level, no spaces): subscribers whose
    claims are identical get the same key and are checked once, as one cohort."""
    return orjson.dumps(
        dict(claims), default=_mapping_as_dict, option=orjson.OPT_SORT_KEYS
    ).decode()


def _flatten(rows: Sequence[Sequence[str | None]], width: int, what: str) -> list[str | None]:
    flat: list[str | None] = []
    for row in rows:
        if len(row) != width:
            raise ValueError(f"{what} has {len(row)} values, expected {width}")
        flat.extend(row)
    return flat


class RlsChecker:
    """Answers "which of these changed rows may each cohort see?" in one round trip.

    Holds no connection: the caller passes one per call (a normal, non-replication connection
    whose login role is a member of every role named in the claims; postgres-cdc.md Q4). An
    autocommit connection that is idle gives the single round trip; otherwise the call runs in
    a block that is rolled back, so role and claims settings never outlive it."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger if logger is not None else _log
        self._logged: set[tuple[str, str]] = set()

    async def visible(
        self,
        conn: AsyncConnection[Any],
        table: TableInfo,
        pk_rows: Sequence[Sequence[str | None]],
        cohorts: Sequence[Mapping[str, Any]],
        xid: int | None = None,
    ) -> list[set[int]]:
        """Per cohort (same order as ``cohorts``), the indexes into ``pk_rows`` whose *current*
        row the cohort's role and claims may SELECT (a row deleted or changed since is judged
        by its present state), once transaction ``xid`` (if given) is visible.

        ``pk_rows`` holds each changed row's primary-key values in ``table.pk`` order, as the
        text pgoutput sent. A cohort whose role does not exist, or whose check fails in the
        database, sees nothing; the cause is logged once, and other cohorts are unaffected.
        A table without a primary key yields nothing visible (§6.7 reports those rows as
        errors instead)."""
        width = len(table.pk)
        if not cohorts:
            return []
        if not pk_rows or width == 0:
            return [set() for _ in cohorts]
        flat = _flatten(pk_rows, width, f"primary-key row of {table.schema}.{table.name}")
        return await self._judge(
            conn, table, _CALL, lambda claims: (table.relid, list(table.pk), flat, claims, xid), cohorts
        )

    async def visible_images(
        self,
        conn: AsyncConnection[Any],
        table: TableInfo,
        xid: int | None,
        columns: Sequence[str],
        images: Sequence[Sequence[str | None]],
        cohorts: Sequence[Mapping[str, Any]],
    ) -> list[set[int]]:
        """Per cohort, the indexes into ``images`` that the table's policies admit for the
        cohort's role and claims, evaluated over the images themselves (protocol.md §6.6).

        ``images`` are rows of text values (pgoutput's text form, ``None`` for NULL) for
        ``columns``, which must name every column of the table.  Transaction ``xid`` is waited
        for first, so policies reading other tables see what it wrote."""
        if not cohorts:
            return []
        if not images:
            return [set() for _ in cohorts]
        flat = _flatten(images, len(columns), f"row image of {table.schema}.{table.name}")
        return await self._judge(
            conn, table, _CALL_IMAGES, lambda claims: (table.relid, xid, list(columns), flat, claims), cohorts
        )

    async def _judge(
        self,
        conn: AsyncConnection[Any],
        table: TableInfo,
        call: str,
        params: Callable[[str], tuple[object, ...]],
        cohorts: Sequence[Mapping[str, Any]],
    ) -> list[set[int]]:
        # Identical claims are checked once (postgres-cdc.md Q4: "Deduplicate identical claims").
        # Claims jsonb cannot hold (a NUL escape) never reach the database, where they would
        # fail the whole call: such a cohort sees nothing (slot None).
        slots: dict[str, int] = {}
        slot_of: list[int | None] = []
        for claims in cohorts:
            key = cohort_key(claims)
            if _JSON_NUL.search(key):
                self._log_once(str(claims.get("role")), "claims contain a NUL character")
                slot_of.append(None)
            else:
                slot_of.append(slots.setdefault(key, len(slots)))
        if not slots:
            return [set() for _ in cohorts]
        claims_json = "[" + ",".join(slots) + "]"

        try:
            rows = await self._call(conn, call, params(claims_json))
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
            # The table was dropped or its columns changed after the change was decoded; nobody
            # may see rows we can no longer judge. The next Relation message refreshes it.
            self._log_once(f"{table.schema}.{table.name}", f"{exc.sqlstate}: {exc}")
            return [set() for _ in cohorts]

        per_slot: list[set[int]] = [set() for _ in slots]
        claims_by_slot = list(slots)
        for cohort, visible, error in rows:
            if error is not None:
                role = orjson.loads(claims_by_slot[cohort]).get("role")
                self._log_once(str(role), str(error))
                continue
            per_slot[cohort] = set(visible or ())
        return [set() if s is None else set(per_slot[s]) for s in slot_of]

    async def _call(
        self, conn: AsyncConnection[Any], call: str, params: tuple[object, ...]
    ) -> list[tuple[int, list[int] | None, str | None]]:
        if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
            # One statement is its own transaction: the function's set_config(..., true)
            # settings end with it.
            cur = await conn.execute(call, params)
            return [(int(c), v, e) for c, v, e in await cur.fetchall()]
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(call, params)
            return [(int(c), v, e) for c, v, e in await cur.fetchall()]

    def _log_once(self, subject: str, error: str) -> None:
        if (subject, error) in self._logged:
            return
        if len(self._logged) >= _MAX_LOGGED:  # bounded memory; at worst a line is repeated
            self._logged.clear()
        self._logged.add((subject, error))
        self._log.warning("RLS check for %s sees nothing: %s", subject, error)
