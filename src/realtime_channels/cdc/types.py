"""The change feed's data types (sans-I/O): decoded changes and transactions, a table's shape as
the catalog describes it, the feed's health state and the messages the reading node shares with
the others.

The replication reader produces ``Transaction`` values; the router and the record builder
consume them; ``TxnShare`` / ``StateShare`` travel between nodes (``txwire`` turns them into
plain JSON-able data and back).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from . import pgoutput

__all__ = ["Change", "ColumnInfo", "FeedState", "HistoryAsk", "HistoryShare", "ResetShare", "ShareOp", "Snapshot", "StateShare",
           "TableInfo", "Transaction", "TxnShare"]

_XID_SPAN = 1 << 32


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One user column of a table.

    ``type_name``/``base_type_oid`` are those of the base type for a domain (the ``columns``
    field of protocol.md §6.5 and the typed-value converters need the base type; postgres-cdc.md
    "Types"). ``element_type_oid`` is, for an array type, its element type resolved through
    domains too — the ``element_type_oid`` argument of ``pgoutput.make_converter``."""

    name: str
    type_name: str
    type_oid: int
    base_type_oid: int
    is_pk: bool
    attnum: int
    element_type_oid: int | None = None


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table's identity and shape. ``columns`` in table order without dropped or system
    columns; ``pk`` the primary-key column names in key order (empty without a primary key,
    protocol.md §6.7); ``rls_enabled`` is ``pg_class.relrowsecurity`` (§6.6)."""

    relid: int
    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]
    pk: tuple[str, ...]
    rls_enabled: bool


@dataclass(frozen=True, slots=True)
class Change:
    """One row change of a committed transaction."""

    relation: pgoutput.Relation  # the table's shape as of this change (latest 'R' for its relid)
    kind: Literal["INSERT", "UPDATE", "DELETE"]
    new: pgoutput.TupleData | None  # None for DELETE
    old: pgoutput.TupleData | None  # the 'K' (key) or 'O' (full) old tuple when sent
    old_kind: str | None  # "K", "O" or None


@dataclass(frozen=True, slots=True)
class Transaction:
    """A committed transaction's published row changes, in the order they were made.

    TRUNCATE and logical decoding messages are not included."""

    xid: int
    commit_lsn: int
    end_lsn: int  # strictly increasing across transactions; the position we store and ack
    commit_ts_us: int  # µs since 2000-01-01 UTC (pgoutput.commit_timestamp formats it)
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Which transactions a snapshot already contains (``pg_current_snapshot()`` and the WAL
    insert position read after it)."""

    xmin: int
    xmax: int
    xip: frozenset[int]
    lsn: int

    @classmethod
    def parse(cls, snapshot: str, lsn: str) -> Snapshot:
        xmin, xmax, xip = snapshot.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x), pgoutput.str_to_lsn(lsn))

    def covers(self, txn: Transaction) -> bool:
        """True when ``txn`` committed before the snapshot (its rows are in it)."""
        if txn.commit_lsn > self.lsn:
            return False
        # pgoutput's xid is 32 bits: widen it to the 64-bit id nearest the snapshot's xmax
        delta = (txn.xid - self.xmax) % _XID_SPAN
        full = self.xmax + (delta - _XID_SPAN if delta >= _XID_SPAN // 2 else delta)
        return full < self.xmin or (full < self.xmax and full not in self.xip)


class FeedState(StrEnum):
    """Health of the change feed (the replication stream as this node knows it).

    A ``StrEnum``: its values are the words the health endpoint has always reported."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class TxnShare:
    """The reading node hands a committed transaction to every node (itself included)."""

    txn: Transaction


@dataclass(frozen=True, slots=True)
class StateShare:
    """The reading node reports the stream's state (also a liveness beat for followers)."""

    state: FeedState


@dataclass(frozen=True, slots=True)
class HistoryAsk:
    """A node that started after the others asks the reading node for its retained transactions
    (protocol.md §4.10: a client may resume on any node, also one just restarted)."""


@dataclass(frozen=True, slots=True)
class HistoryShare:
    """Retained transactions, oldest first, in answer to ``HistoryAsk`` (several ops, the last
    with ``last``); ``complete_after``: the reader's retention holds every transaction after it."""

    txns: tuple[Transaction, ...]
    complete_after: int | None
    last: bool


@dataclass(frozen=True, slots=True)
class ResetShare:
    """The reading node found its slot or publication gone and recreated it at ``lsn``:
    changes committed in between were not delivered (every node tells its channels)."""

    lsn: int


ShareOp = TxnShare | StateShare | HistoryAsk | HistoryShare | ResetShare
