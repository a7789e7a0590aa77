"""pgoutput decoding and typed JSON values for ``postgres_changes`` (protocol.md §6.5, §6.7).

Sans-I/O: bytes in, dataclasses and JSON-ready values out; no sockets, no driver, no clock.

Three layers, each following a PostgreSQL document:

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
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Literal, TypeAlias

import orjson

from ..errors import InternalError

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


class PgOutputError(InternalError):
    """Bytes from the walsender that do not decode: truncated, trailing or unknown input.

    An ``InternalError`` because the peer here is our own database; clients only ever see the
    generic text (errors.py)."""


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


# --- replication stream framing ("Streaming Replication Protocol") ------------------------


@dataclass(frozen=True, slots=True)
class XLogData:
    wal_start: int
    wal_end: int
    server_time_us: int  # µs since 2000-01-01 UTC
    payload: memoryview | bytes  # one pgoutput message; a view when the input was a view


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    wal_end: int  # ack this when nothing is pending, or the slot pins WAL (postgres-cdc.md)
    server_time_us: int
    reply_requested: bool


_XLOG_HEAD = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_STANDBY_STATUS = struct.Struct("!cQQQqB")


def decode_copy_data(buf: bytes | memoryview) -> XLogData | PrimaryKeepalive:
    """Decode one CopyData payload received from a walsender."""
    if len(buf) == 0:
        raise PgOutputError("empty CopyData message")
    kind = buf[0]
    if kind == 0x77:  # 'w'
        if len(buf) < 1 + _XLOG_HEAD.size:
            raise PgOutputError("truncated XLogData message")
        start, end, ts = _XLOG_HEAD.unpack_from(buf, 1)
        return XLogData(start, end, ts, buf[1 + _XLOG_HEAD.size :])
    if kind == 0x6B:  # 'k'
        if len(buf) != 1 + _KEEPALIVE.size:
            raise PgOutputError("malformed primary keepalive message")
        end, ts, reply = _KEEPALIVE.unpack_from(buf, 1)
        return PrimaryKeepalive(end, ts, bool(reply))
    raise PgOutputError("unknown CopyData message type")


def encode_standby_status(
    write_lsn: int, flush_lsn: int, apply_lsn: int, now_us_since_2000: int, reply: bool = False
) -> bytes:
    """The 34-byte ``Standby status update`` ('r') we send to acknowledge WAL (design.md §3)."""
    return _STANDBY_STATUS.pack(b"r", write_lsn, flush_lsn, apply_lsn, now_us_since_2000, reply)


def lsn_to_str(lsn: int) -> str:
    """``pg_lsn`` text form: two uppercase hex halves, e.g. ``16/B374D848``."""
    if not 0 <= lsn < 1 << 64:
        raise ValueError("LSN out of range")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


def str_to_lsn(s: str) -> int:
    """Inverse of ``lsn_to_str``; accepts what ``pg_lsn`` input accepts (1–8 hex digits per half)."""
    high, sep, low = s.partition("/")
    for half in (high, low):
        if not sep or not 1 <= len(half) <= 8 or not set(half) <= _HEX_DIGITS:
            raise ValueError(f"invalid LSN {s!r}")
    return int(high, 16) << 32 | int(low, 16)


_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=timezone.utc)


def commit_timestamp(commit_ts_us: int) -> str:
    """``commit_timestamp`` of protocol.md §6.5: UTC, milliseconds (truncated), ``Z``."""
    try:
        t = _PG_EPOCH + timedelta(microseconds=commit_ts_us)
    except OverflowError:
        raise PgOutputError("commit timestamp out of range") from None
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond // 1000:03d}Z"
    )


# --- typed values (to_jsonb rules) -----------------------------------------------------------

#: Turns a column's text bytes into a JSON-ready value.
Converter: TypeAlias = Callable[[bytes], Any]
_TextConverter: TypeAlias = Callable[[str], Any]

# (name, oid, array oid) from pg_type; checked against a live catalog by the unit tests.
_BUILTIN_TYPES: Final[tuple[tuple[str, int, int], ...]] = (
    ("bool", 16, 1000),
    ("bytea", 17, 1001),
    ("char", 18, 1002),
    ("name", 19, 1003),
    ("int8", 20, 1016),
    ("int2", 21, 1005),
    ("int4", 23, 1007),
    ("text", 25, 1009),
    ("oid", 26, 1028),
    ("json", 114, 199),
    ("xml", 142, 143),
    ("point", 600, 1017),
    ("cidr", 650, 651),
    ("float4", 700, 1021),
    ("float8", 701, 1022),
    ("macaddr8", 774, 775),
    ("money", 790, 791),
    ("macaddr", 829, 1040),
    ("inet", 869, 1041),
    ("bpchar", 1042, 1014),
    ("varchar", 1043, 1015),
    ("date", 1082, 1182),
    ("time", 1083, 1183),
    ("timestamp", 1114, 1115),
    ("timestamptz", 1184, 1185),
    ("interval", 1186, 1187),
    ("timetz", 1266, 1270),
    ("bit", 1560, 1561),
    ("varbit", 1562, 1563),
    ("numeric", 1700, 1231),
    ("uuid", 2950, 2951),
    ("pg_lsn", 3220, 3221),
    ("tsvector", 3614, 3643),
    ("tsquery", 3615, 3645),
    ("jsonb", 3802, 3807),
    ("int4range", 3904, 3905),
    ("numrange", 3906, 3907),
    ("tsrange", 3908, 3909),
    ("tstzrange", 3910, 3911),
    ("daterange", 3912, 3913),
    ("int8range", 3926, 3927),
    ("jsonpath", 4072, 4073),
)

_TYPE_NAMES: Final[dict[int, str]] = {
    **{oid: name for name, oid, _ in _BUILTIN_TYPES},
    **{array: "_" + name for name, _, array in _BUILTIN_TYPES},
}
_TYPE_OIDS: Final[dict[str, int]] = {name: oid for oid, name in _TYPE_NAMES.items()}
_ARRAY_ELEMENT: Final[dict[int, int]] = {array: oid for _, oid, array in _BUILTIN_TYPES}


def type_name(type_oid: int) -> str | None:
    """``pg_type.typname`` of a built-in type (``int4``, ``_text`` for ``text[]``), for the
    ``columns`` field of protocol.md §6.5; ``None`` for types the caller must look up."""
    return _TYPE_NAMES.get(type_oid)


def builtin_type_oid(name: str) -> int | None:
    """Inverse of ``type_name`` for the built-in types it knows (``"int4"`` → 23)."""
    return _TYPE_OIDS.get(name)


_NON_FINITE: Final = frozenset(("NaN", "Infinity", "-Infinity"))


def _text(s: str) -> str:
    return s


def _bool(s: str) -> bool:
    return s == "t"


def _float(s: str) -> float | str:
    # to_jsonb emits non-finite floats as strings, JSON having no spelling for them.
    return s if s in _NON_FINITE else float(s)


def _numeric(s: str) -> orjson.Fragment | str:
    # Never through float (postgres-cdc.md "Types"): the text is already a JSON number.
    return s if s in _NON_FINITE else orjson.Fragment(s)


def _json(s: str) -> orjson.Fragment:
    return orjson.Fragment(s)


def _timestamp(s: str) -> str:
    # to_jsonb uses the XSD style: ISO with a 'T' separator (" BC" stays a suffix);
    # 'infinity' / '-infinity' pass unchanged.
    return s.replace(" ", "T", 1) if s[:1].isdigit() else s


def _timestamptz(s: str) -> str:
    # XSD style also writes a whole-hour offset as "+00:00" where ISO writes "+00";
    # offsets with minutes or seconds are spelled the same in both (timetz, by contrast,
    # keeps "+02" in to_jsonb).
    if not s[:1].isdigit():
        return s
    s = s.replace(" ", "T", 1)
    era = ""
    if s.endswith(" BC"):
        s, era = s[:-3], " BC"
    sign = max(s.rfind("+"), s.rfind("-"))
    if sign >= 0 and len(s) - sign == 3:
        s += ":00"
    return s + era


_SCALAR: Final[dict[int, _TextConverter]] = {
    16: _bool,
    20: int,
    21: int,
    23: int,
    700: _float,
    701: _float,
    1700: _numeric,
    114: _json,
    3802: _json,
    1114: _timestamp,
    1184: _timestamptz,
}


def _element_converter(type_oid: int) -> _TextConverter:
    return _SCALAR.get(type_oid, _text)


def _array_converter(element: _TextConverter) -> _TextConverter:
    def convert(s: str) -> list[Any]:
        return _parse_array(s, element)

    return convert


def parse_array_literal(text: str, element: Callable[[str], Any] = _text) -> list[Any]:
    """Parse array text output (``{1,NULL,"a b"}``, nested, optional ``[lo:hi]=`` bounds) into
    nested lists, applying ``element`` to every non-NULL element.  Raises ``PgOutputError``."""
    return _parse_array(text, element)


def _parse_array(text: str, element: Callable[[str], Any]) -> list[Any]:
    pos = 0
    if text.startswith("["):
        # array_out writes explicit bounds when a lower bound is not 1; to_jsonb drops them.
        pos = text.find("=") + 1
        if pos == 0:
            raise PgOutputError("malformed array literal")
    try:
        value, pos = _parse_dimension(text, pos, element)
    except IndexError:
        raise PgOutputError("truncated array literal") from None
    except ValueError:  # an element the element converter cannot read
        raise PgOutputError("malformed array element") from None
    if pos != len(text):
        raise PgOutputError("trailing characters after array literal")
    return value


def _parse_dimension(text: str, pos: int, element: Callable[[str], Any]) -> tuple[list[Any], int]:
    """Parse ``{...}`` starting at ``pos``; return the list and the position after ``}``.

    array_out quotes every element that is empty, spells ``NULL``, or holds whitespace, a quote,
    a backslash, a brace or the delimiter, so an unquoted element needs no unescaping."""
    if text[pos] != "{":
        raise PgOutputError("malformed array literal")
    pos += 1
    out: list[Any] = []
    if text[pos] == "}":
        return out, pos + 1
    while True:
        c = text[pos]
        if c == "{":
            sub, pos = _parse_dimension(text, pos, element)
            out.append(sub)
        elif c == '"':
            value, pos = _parse_quoted(text, pos + 1)
            out.append(element(value))
        else:
            end = pos
            while text[end] not in ",}":
                end += 1
            raw = text[pos:end]
            out.append(None if raw == "NULL" else element(raw))
            pos = end
        c = text[pos]
        pos += 1
        if c == "}":
            return out, pos
        if c != ",":
            raise PgOutputError("malformed array literal")


def _parse_quoted(text: str, pos: int) -> tuple[str, int]:
    """Unescape a quoted element whose opening quote is just before ``pos``."""
    parts: list[str] = []
    while True:
        quote = text.find('"', pos)
        if quote < 0:
            raise PgOutputError("unterminated quoted array element")
        backslash = text.find("\\", pos, quote)
        if backslash < 0:
            parts.append(text[pos:quote])
            return "".join(parts), quote + 1
        parts.append(text[pos:backslash])
        parts.append(text[backslash + 1])
        pos = backslash + 2


def _decode(value: bytes) -> str:
    # pgoutput sends text in the database encoding, which we require to be UTF-8.
    return value.decode("utf-8", "replace")


def _bytes_converter(convert: _TextConverter) -> Converter:
    if convert is _text:
        return _decode

    def from_bytes(value: bytes) -> Any:
        try:
            return convert(_decode(value))
        except ValueError:  # e.g. float("x"): the text is not of the column's type
            raise PgOutputError("value does not match its column type") from None

    return from_bytes


def _int(value: bytes) -> int:
    try:
        return int(value)  # int() reads ASCII digits from bytes directly
    except ValueError:
        raise PgOutputError("value does not match its column type") from None


@functools.lru_cache(maxsize=1024)
def make_converter(
    type_oid: int, base_type_oid: int | None = None, element_type_oid: int | None = None
) -> Converter:
    """Converter from a column's text bytes to a value that ``orjson.dumps`` renders like
    ``to_jsonb`` (design.md §3):

    * int2/int4/int8 → int; float4/float8 → float (NaN, ±Infinity → strings);
      numeric → ``orjson.Fragment`` of the exact text (NaN, ±Infinity → strings);
    * bool → bool; json/jsonb → ``orjson.Fragment`` of the text;
    * timestamp/timestamptz → ISO with ``T`` (``+00:00`` offset for timestamptz);
    * arrays → (nested) lists with NULL → ``None`` and the element rule applied;
    * everything else (oid, money, bytea as ``\\x…``, date, time, timetz, …) → the text.

    ``base_type_oid``: for a domain, its base type (``pg_type.typbasetype``).
    ``element_type_oid``: for an array type not built in (``mood[]``, a domain array), the
    element type (``pg_type.typelem``, resolved to its base type for domains).
    """
    oid = base_type_oid if base_type_oid is not None else type_oid
    element = element_type_oid if element_type_oid is not None else _ARRAY_ELEMENT.get(oid)
    if element is not None:
        return _bytes_converter(_array_converter(_element_converter(element)))
    if oid in (20, 21, 23):
        return _int
    return _bytes_converter(_element_converter(oid))
