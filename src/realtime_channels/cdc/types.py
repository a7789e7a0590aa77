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

__all__ = ["Change", "ColumnInfo", "FeedState", "ShareOp", "StateShare", "TableInfo", "Transaction", "TxnShare"]


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


ShareOp = TxnShare | StateShare
