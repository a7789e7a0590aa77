"""pgoutput decoding and typed JSON values for ``postgres_changes`` (protocol.md §6.5, §6.7).

Sans-I/O: bytes in, dataclasses and JSON-ready values out; no sockets, no driver, no clock.

Three layers, each following a PostgreSQL document (framing in ``walstream``, typed values in
``values``; this module re-exports their names):

* **Replication stream framing** — the CopyData payloads of a walsender in COPY_BOTH mode
  ("Streaming Replication Protocol"): ``XLogData`` ('w'), ``Primary keepalive`` ('k') and our
  ``Standby status update`` ('r').
* **pgoutput protocol version 1** ("Logical Replication Message Formats"): Begin, Commit,
  Origin, Relation, Type, Insert, Update, Delete, Truncate and logical decoding Message.  Tuple
  values stay as the walsender's text bytes; ``'u'`` (an unchanged TOASTed value, §6.7) becomes
  the ``UNCHANGED`` sentinel so callers can fill it from the old row or leave the key out.
* **Typed values** — converters chosen by type OID that turn those text bytes into values whose
  ``orjson.dumps`` matches PostgreSQL's ``to_jsonb`` (design.md §3), assuming the walsender
  session runs with ``DateStyle=ISO`` and ``TimeZone=UTC`` (postgres-cdc.md "Types").  The
  rules were checked against a real PostgreSQL 15 (``tests/unit/data/pgoutput``).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

__all__ = [
    "UNCHANGED",
    "Begin",
    "Column",
    "Commit",
    "Converter",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "PgOutputError",
    "PgOutputMessage",
    "PrimaryKeepalive",
    "Relation",
    "Truncate",
    "TupleData",
    "TupleValue",
    "TypeMsg",
    "Unchanged",
    "Update",
    "XLogData",
    "commit_timestamp",
    "decode_copy_data",
    "decode_message",
    "encode_standby_status",
    "lsn_to_str",
    "builtin_type_oid",
    "make_converter",
    "parse_array_literal",
    "str_to_lsn",
    "type_name",
]


class Unchanged(enum.Enum):
    """Tuple value kind ``'u'``: a TOASTed value the UPDATE did not touch, so the WAL does not
    carry it (postgres-cdc.md "TOAST unchanged values", protocol.md §6.7)."""

    UNCHANGED = "u"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.UNCHANGED

#: One column of a tuple: text bytes (``'t'``), ``None`` (``'n'``) or ``UNCHANGED`` (``'u'``).
TupleValue: TypeAlias = bytes | None | Literal[Unchanged.UNCHANGED]


# --- pgoutput messages ("Logical Replication Message Formats", protocol version 1) --------


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts_us: int  # µs since 2000-01-01 UTC
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # what we acknowledge once the transaction is handled (design.md §3)
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int  # LSN of the commit on the origin server
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    flags: int
    name: str
    type_oid: int
    atttypmod: int

    @property
    def is_key(self) -> bool:
        """Part of the replica identity (flag 1): the primary key under REPLICA IDENTITY
        DEFAULT, every column under FULL."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    namespace: str  # "" for pg_catalog, as pgoutput sends it
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TypeMsg:
    """Sent before a Relation for each column of a non-built-in type (enum, domain, ...).

    For a domain pgoutput names its *base* type (``namespace`` ``""`` means pg_catalog), so
    ``builtin_type_oid(name)`` gives the ``base_type_oid`` for ``make_converter`` without a
    catalog query; for an enum or composite it names the type itself."""

    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class TupleData:
    values: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    old: TupleData | None  # absent under REPLICA IDENTITY DEFAULT unless the key changed
    old_kind: Literal["K", "O"] | None  # 'K' key columns only, 'O' the whole old row (FULL)
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    old: TupleData  # with 'K', non-key columns arrive as NULL and must be stripped
    old_kind: Literal["K", "O"]


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]
    options: int  # 1 CASCADE, 2 RESTART IDENTITY


@dataclass(frozen=True, slots=True)
class Message:
    """``pg_logical_emit_message`` output (only with the ``messages`` option)."""

    flags: int  # 1 = transactional
    lsn: int
    prefix: str
    content: bytes

    @property
    def transactional(self) -> bool:
        return bool(self.flags & 1)


PgOutputMessage: TypeAlias = (
    Begin | Commit | Origin | Relation | TypeMsg | Insert | Update | Delete | Truncate | Message
)


class _Reader:
    """Cursor over one message; every read is bounds-checked so truncated input raises
    ``PgOutputError`` instead of returning a short value."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        try:
            values = fmt.unpack_from(self.buf, self.pos)
        except struct.error:
            raise PgOutputError("truncated pgoutput message") from None
        self.pos += fmt.size
        return values

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise PgOutputError("truncated pgoutput message")
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise PgOutputError("unterminated string in pgoutput message")
        value = self.buf[self.pos : end].decode("utf-8", "replace")
        self.pos = end + 1
        return value

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise PgOutputError("truncated pgoutput message")
        value = self.buf[self.pos : end]
        self.pos = end
        return value

    def finish(self) -> None:
        # One CopyData carries exactly one message; leftovers mean we are out of step.
        if self.pos != len(self.buf):
            raise PgOutputError("trailing bytes after pgoutput message")


_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_COLUMN_TAIL = struct.Struct("!Ii")
_RELATION_TAIL = struct.Struct("!BH")
_TRUNCATE_HEAD = struct.Struct("!IB")
_MESSAGE_HEAD = struct.Struct("!BQ")


def _tuple(r: _Reader) -> TupleData:
    (ncols,) = r.unpack(_U16)
    values: list[TupleValue] = []
    for _ in range(ncols):
        kind = r.byte()
        if kind == 0x74:  # 't' text
            (length,) = r.unpack(_I32)
            values.append(r.take(length))
        elif kind == 0x6E:  # 'n' null
            values.append(None)
        elif kind == 0x75:  # 'u' unchanged TOAST
            values.append(UNCHANGED)
        elif kind == 0x62:  # 'b' binary: only with the "binary" option, which we never set
            raise PgOutputError("binary tuple values are not supported")
        else:
            raise PgOutputError("unknown tuple value kind")
    return TupleData(tuple(values))


def _begin(r: _Reader) -> Begin:
    final_lsn, ts, xid = r.unpack(_BEGIN)
    return Begin(final_lsn, ts, xid)


def _commit(r: _Reader) -> Commit:
    flags, commit_lsn, end_lsn, ts = r.unpack(_COMMIT)
    return Commit(flags, commit_lsn, end_lsn, ts)


def _origin(r: _Reader) -> Origin:
    (lsn,) = r.unpack(_U64)
    return Origin(lsn, r.cstring())


def _relation(r: _Reader) -> Relation:
    (relid,) = r.unpack(_U32)
    namespace = r.cstring()
    name = r.cstring()
    identity, ncols = r.unpack(_RELATION_TAIL)
    columns = []
    for _ in range(ncols):
        flags = r.byte()
        col_name = r.cstring()
        type_oid, typmod = r.unpack(_COLUMN_TAIL)
        columns.append(Column(flags, col_name, type_oid, typmod))
    return Relation(relid, namespace, name, chr(identity), tuple(columns))


def _type(r: _Reader) -> TypeMsg:
    (oid,) = r.unpack(_U32)
    namespace = r.cstring()
    return TypeMsg(oid, namespace, r.cstring())


def _old_kind(kind: int) -> Literal["K", "O"]:
    if kind == 0x4B:
        return "K"
    if kind == 0x4F:
        return "O"
    raise PgOutputError("expected an old tuple marker 'K' or 'O'")


def _insert(r: _Reader) -> Insert:
    (relid,) = r.unpack(_U32)
    if r.byte() != 0x4E:  # 'N'
        raise PgOutputError("expected a new tuple marker 'N'")
    return Insert(relid, _tuple(r))


def _update(r: _Reader) -> Update:
    (relid,) = r.unpack(_U32)
    marker = r.byte()
    old: TupleData | None = None
    old_kind: Literal["K", "O"] | None = None
    if marker != 0x4E:
        old_kind = _old_kind(marker)
        old = _tuple(r)
        if r.byte() != 0x4E:
            raise PgOutputError("expected a new tuple marker 'N'")
    return Update(relid, old, old_kind, _tuple(r))


def _delete(r: _Reader) -> Delete:
    (relid,) = r.unpack(_U32)
    kind = _old_kind(r.byte())
    return Delete(relid, _tuple(r), kind)


def _truncate(r: _Reader) -> Truncate:
    count, options = r.unpack(_TRUNCATE_HEAD)
    relids = r.unpack(struct.Struct(f"!{count}I"))
    return Truncate(tuple(relids), options)


def _message(r: _Reader) -> Message:
    flags, lsn = r.unpack(_MESSAGE_HEAD)
    prefix = r.cstring()
    (length,) = r.unpack(_I32)
    return Message(flags, lsn, prefix, r.take(length))


_DECODERS: Final[dict[int, Callable[[_Reader], PgOutputMessage]]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}


def decode_message(buf: bytes | memoryview) -> PgOutputMessage:
    """Decode one pgoutput (protocol version 1) message, e.g. an ``XLogData`` payload.

    Raises ``PgOutputError`` on empty, truncated, trailing or unknown input (including the
    protocol-2 streaming messages, which we never ask for)."""
    data = bytes(buf)
    if not data:
        raise PgOutputError("empty pgoutput message")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise PgOutputError("unknown pgoutput message type")
    reader = _Reader(data, 1)
    message = decoder(reader)
    reader.finish()
    return message


# Framing and typed values live in their own modules; their names are part of this one's API.
from .values import (  # noqa: E402
    Converter,
    PgOutputError,
    builtin_type_oid,
    make_converter,
    parse_array_literal,
    type_name,
)
from .walstream import (  # noqa: E402
    PrimaryKeepalive,
    XLogData,
    commit_timestamp,
    decode_copy_data,
    encode_standby_status,
    lsn_to_str,
    str_to_lsn,
)
