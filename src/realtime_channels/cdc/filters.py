"""The ``postgres_changes`` filter grammar: parse, validate against a table, match rows.

protocol.md §6.2.  Sans-I/O: no database, no clock.  Three steps:

* :func:`parse_filter` turns the client's ``filter`` string into :class:`Condition` objects, with
  the reference server's splitting and error texts (``Error parsing `filter` params: …``).
* :func:`validate` checks them against the table's columns (what the reference does in a trigger
  when the subscription row is inserted): unknown column, value that does not cast to the column
  type, too many ``in`` items, bad ``is`` keyword, ``like``/``match`` on a non-text column, bad
  regular expression.  The result is a tuple of :class:`TypedCondition` holding typed values.
* :func:`matches` evaluates them against a decoded row with SQL semantics (three-valued logic,
  NULL never matches except through ``is``/``isdistinct``).

Deliberate differences from PostgreSQL, all in the direction of "works without a database":

* Text is ordered by code point; collation-aware ordering (``lt``/``gt`` on text) and the
  declaration order of enums are not reproduced.
* ``timestamptz``/``timetz`` literals without an offset are read as UTC (the reference session
  runs with ``TimeZone=UTC``); ``now``/``today``-style values are refused, they would need a clock.
* ``like``/``ilike``/``match``/``imatch`` run on RE2 in time linear in the value
  (``patterns.py``); PostgreSQL ARE constructs an automaton cannot run (back-references,
  lookaround constraints) and a few rare ones are refused at subscribe time.
* ``json`` (not ``jsonb``) has no equality in PostgreSQL, so only ``is.null`` is accepted on it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from enum import Enum
from typing import Any

from .patterns import Pattern, PatternError, compile_like, compile_regex

__all__ = [
    "OPERATORS",
    "MAX_IN_ITEMS",
    "Condition",
    "FilterError",
    "TypedCondition",
    "matches",
    "parse_filter",
    "validate",
]

#: Operators of protocol.md §6.2, in the reference's order.
OPERATORS: frozenset[str] = frozenset(
    ("eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "is", "match", "imatch", "isdistinct")
)
#: protocol.md §6.2: an ``in`` list holds at most 100 items.
MAX_IN_ITEMS = 100
_PARSE_PREFIX = "Error parsing `filter` params: "
_IS_VALUES = ("null", "true", "false", "unknown")


class FilterError(ValueError):
    """A filter the client must fix.  ``str(err)`` is the exact client-facing text."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``<column>=[not.]<op>.<value>`` condition, as written by the client.

    ``value`` is the raw text with PostgREST quotes removed; for ``in`` it is the tuple of
    array items, where an unquoted ``NULL`` item is ``None`` (it is an SQL NULL in the
    reference's ``{…}`` array literal, protocol.md §6.2).
    """

    column: str
    op: str
    negated: bool
    value: str | tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class TypedCondition:
    """A :class:`Condition` checked against its column and with its value cast to the column type.

    ``value`` is the typed Python value (``int``, ``Decimal``, ``datetime`` …; a tuple for ``in``;
    the keyword for ``is``; the pattern text for ``like``/``match``).
    """

    column: str
    op: str
    negated: bool
    pg_type: str
    value: Any
    _type: _ColType = field(repr=False, compare=False)
    #: comparison key of ``value`` (a tuple of keys, ``None`` for NULL items, for ``in``)
    _key: Any = field(repr=False, compare=False, default=None)
    #: compiled pattern for like/ilike/match/imatch
    _pattern: Pattern | None = field(repr=False, compare=False, default=None)


# =============================================================================================
# Parsing (protocol.md §6.2), following the reference server's rules
# =============================================================================================


def parse_filter(text: str | None) -> tuple[Condition, ...]:
    """Parse a ``filter`` string; empty, whitespace-only or ``None`` means no filter."""
    if text is None:
        return ()
    trimmed = text.strip()
    if not trimmed:
        return ()
    return tuple(_parse_segment(seg) for seg in _split_top_level(trimmed))


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are outside double quotes and parentheses.

    As in the reference, a double quote opens a quoted value only right after ``.``, ``(`` or
    ``,`` (so ``eq."a,b"`` and ``in.("a,b",c)`` are quoted but ``eq.a"b`` is a literal quote);
    inside quotes a backslash protects the next character.
    """
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    quoted = False
    prev = ""
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if quoted:
            if ch == "\\" and i + 1 < n:
                cur.append(text[i : i + 2])
                prev = text[i + 1]
                i += 2
                continue
            if ch == '"':
                quoted = False
            cur.append(ch)
        elif ch == '"' and prev in (".", "(", ","):
            quoted = True
            cur.append(ch)
        elif ch == "(":
            depth += 1
            cur.append(ch)
        elif ch == ")":
            depth = max(0, depth - 1)
            cur.append(ch)
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            ch = ""  # a new segment starts with no previous character
        else:
            cur.append(ch)
        prev = ch
        i += 1
    parts.append("".join(cur))
    return parts


def _parse_segment(segment: str) -> Condition:
    trimmed = segment.strip()
    if not trimmed:
        raise FilterError(_PARSE_PREFIX + "filter must not contain empty segments (check for extra commas)")
    column, eq, rest = trimmed.partition("=")
    if not eq:
        raise FilterError(_PARSE_PREFIX + _inspect_list([trimmed]))
    negated = rest.startswith("not.")
    op_value = rest[4:] if negated else rest
    op, dot, raw = op_value.partition(".")
    if not dot:
        raise FilterError(_PARSE_PREFIX + _inspect_list([op_value]))
    if op not in OPERATORS:
        # The reference reports the split parts of an unknown operator (protocol.md §6.2).
        raise FilterError(_PARSE_PREFIX + _inspect_list([op, raw]))
    if op == "in":
        if len(raw) < 2 or raw[0] != "(" or raw[-1] != ")":
            raise FilterError(_PARSE_PREFIX + "`in` filter value must be wrapped by parentheses")
        # The reference hands `{…}` to PostgreSQL as an array literal; parse it the same way.
        try:
            items = _parse_array_literal("{" + raw[1:-1] + "}", allow_nested=False)
        except FilterError as exc:
            # Every error of this step is a parse error with the reference's prefix.
            raise FilterError(_PARSE_PREFIX + exc.message) from None
        return Condition(column, op, negated, tuple(_flat_items(items)))
    return Condition(column, op, negated, _unquote(raw))


def _flat_items(items: list[Any]) -> list[str | None]:
    return [i for i in items if i is None or isinstance(i, str)]


def _unquote(value: str) -> str:
    """Remove PostgREST double quotes, resolving backslash escapes.

    A value that merely starts with a quote but is not one well-formed quoted string is kept
    verbatim, like the reference does.
    """
    if not value.startswith('"'):
        return value
    out: list[str] = []
    i, n = 1, len(value)
    while i < n:
        ch = value[i]
        if ch == '"':
            return "".join(out) if i == n - 1 else value
        if ch == "\\" and i + 1 < n:
            out.append(value[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return value


def _inspect_list(parts: list[str]) -> str:
    """Render a list of strings the way the reference (Elixir ``inspect``) does."""
    return "[" + ", ".join(_inspect_str(p) for p in parts) + "]"


_ELIXIR_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\v": "\\v",
    "\b": "\\b", "\f": "\\f", "\x1b": "\\e", "\x07": "\\a",
}  # fmt: skip


def _printable(ch: str) -> bool:
    """Elixir's ``String.printable?`` per code point."""
    cp = ord(ch)
    return (
        ch in _ELIXIR_ESCAPES
        or 0x20 <= cp <= 0x7E
        or 0xA0 <= cp <= 0xD7FF
        or 0xE000 <= cp <= 0xFFFD
        or 0x10000 <= cp <= 0x10FFFF
    )


def _inspect_str(s: str) -> str:
    if not all(_printable(ch) for ch in s):
        # Elixir shows a non-printable binary as its bytes.
        return "<<" + ", ".join(str(b) for b in s.encode("utf-8", "surrogatepass")) + ">>"
    out: list[str] = []
    for i, ch in enumerate(s):
        if ch in _ELIXIR_ESCAPES:
            out.append(_ELIXIR_ESCAPES[ch])
        elif ch == "#" and s[i + 1 : i + 2] == "{":
            out.append("\\#")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _parse_array_literal(text: str, *, allow_nested: bool) -> list[Any]:
    """Parse a PostgreSQL array literal ``{a,"b,c",NULL}`` into items (``None`` for NULL).

    Rules of PostgreSQL's ``array_in``: whitespace around items is ignored, double-quoted items
    take backslash escapes, unquoted items may use backslash escapes too, an unquoted ``NULL``
    (any case) is a NULL item, and ``{}`` is empty.  Nested braces give nested lists.
    """
    err = FilterError(f'malformed array literal: "{text}"')
    pos = 0
    n = len(text)

    def skip_ws(p: int) -> int:
        while p < n and text[p].isspace():
            p += 1
        return p

    def parse_array(p: int, nested: bool) -> tuple[list[Any], int]:
        if nested and not allow_nested:
            raise err
        assert text[p] == "{"
        p = skip_ws(p + 1)
        items: list[Any] = []
        if p < n and text[p] == "}":
            return items, p + 1
        while True:
            p = skip_ws(p)
            if p >= n:
                raise err
            ch = text[p]
            if ch == "{":
                sub, p = parse_array(p, True)
                items.append(sub)
            elif ch == '"':
                buf: list[str] = []
                p += 1
                while True:
                    if p >= n:
                        raise err
                    c = text[p]
                    if c == "\\" and p + 1 < n:
                        buf.append(text[p + 1])
                        p += 2
                    elif c == '"':
                        p += 1
                        break
                    else:
                        buf.append(c)
                        p += 1
                items.append("".join(buf))
            else:
                buf = []
                escaped_upto = 0  # length of buf that came from escapes (not trimmed)
                saw_escape = False
                while p < n and text[p] not in ",}":
                    c = text[p]
                    if c in '{"':
                        raise err
                    if c == "\\" and p + 1 < n:
                        buf.append(text[p + 1])
                        escaped_upto = len(buf)
                        saw_escape = True
                        p += 2
                        continue
                    buf.append(c)
                    p += 1
                while len(buf) > escaped_upto and buf[-1].isspace():
                    buf.pop()
                item = "".join(buf)
                if not item:
                    raise err
                items.append(None if not saw_escape and item.upper() == "NULL" else item)
            p = skip_ws(p)
            if p >= n:
                raise err
            if text[p] == ",":
                p += 1
                continue
            if text[p] == "}":
                return items, p + 1
            raise err

    pos = skip_ws(pos)
    if pos >= n or text[pos] != "{":
        raise err
    result, pos = parse_array(pos, False)
    if skip_ws(pos) != n:
        raise err
    return result


# =============================================================================================
# Column types
# =============================================================================================


class _Kind(Enum):
    INT = "int"
    FLOAT = "float"
    NUMERIC = "numeric"
    TEXT = "text"
    BPCHAR = "bpchar"
    CITEXT = "citext"
    BOOL = "bool"
    UUID = "uuid"
    DATE = "date"
    TIME = "time"
    TIMETZ = "timetz"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    BYTEA = "bytea"
    JSON = "json"
    JSONB = "jsonb"
    ARRAY = "array"


@dataclass(frozen=True, slots=True)
class _ColType:
    typname: str
    kind: _Kind
    display: str  # PostgreSQL's regtype spelling, used in messages like PostgreSQL's own
    elem: _ColType | None = None
    int_range: tuple[int, int] | None = None
    float_max: float | None = None


_SCALARS: dict[str, tuple[_Kind, str]] = {
    "int2": (_Kind.INT, "smallint"),
    "int4": (_Kind.INT, "integer"),
    "int8": (_Kind.INT, "bigint"),
    "float4": (_Kind.FLOAT, "real"),
    "float8": (_Kind.FLOAT, "double precision"),
    "numeric": (_Kind.NUMERIC, "numeric"),
    "text": (_Kind.TEXT, "text"),
    "varchar": (_Kind.TEXT, "character varying"),
    "name": (_Kind.TEXT, "name"),
    "bpchar": (_Kind.BPCHAR, "character"),
    "citext": (_Kind.CITEXT, "citext"),
    "bool": (_Kind.BOOL, "boolean"),
    "uuid": (_Kind.UUID, "uuid"),
    "json": (_Kind.JSON, "json"),
    "jsonb": (_Kind.JSONB, "jsonb"),
    "date": (_Kind.DATE, "date"),
    "time": (_Kind.TIME, "time without time zone"),
    "timetz": (_Kind.TIMETZ, "time with time zone"),
    "timestamp": (_Kind.TIMESTAMP, "timestamp without time zone"),
    "timestamptz": (_Kind.TIMESTAMPTZ, "timestamp with time zone"),
    "bytea": (_Kind.BYTEA, "bytea"),
}
# Also accept the regtype spellings and common aliases for the same types.
_ALIASES: dict[str, str] = {disp: name for name, (_, disp) in _SCALARS.items()}
_ALIASES.update(
    {
        "int": "int4", "integer": "int4", "smallint": "int2", "bigint": "int8", "real": "float4",
        "double precision": "float8", "decimal": "numeric", "boolean": "bool", "char": "bpchar",
        "character": "bpchar", "character varying": "varchar", "timestamp with time zone": "timestamptz",
        "timestamp without time zone": "timestamp", "time with time zone": "timetz",
        "time without time zone": "time",
    }
)  # fmt: skip
_INT_RANGES = {"int2": (-(2**15), 2**15 - 1), "int4": (-(2**31), 2**31 - 1), "int8": (-(2**63), 2**63 - 1)}
_FLOAT_MAX = {"float4": 3.4028234663852886e38, "float8": 1.7976931348623157e308}


def _col_type(pg_type: str) -> _ColType:
    """Map a ``pg_type`` name (``int4``, ``_int4``, ``integer[]`` …) to its matching semantics.

    Types we do not know (enums, ``inet``, domains the caller did not resolve …) are treated as
    text, as the brief of this module allows: their values compare by their text.
    """
    name = pg_type.strip().lower()
    if name.startswith("_") or name.endswith("[]"):
        elem = _col_type(name[1:] if name.startswith("_") else name[:-2])
        return _ColType(pg_type, _Kind.ARRAY, elem.display + "[]", elem=elem)
    name = _ALIASES.get(name, name)
    kind, display = _SCALARS.get(name, (_Kind.TEXT, pg_type))
    return _ColType(name, kind, display, int_range=_INT_RANGES.get(name), float_max=_FLOAT_MAX.get(name))


# =============================================================================================
# Casting literals (the filter side) and computing comparison keys (both sides)
# =============================================================================================
#
# Every kind has a *key*: a value with a total order mirroring PostgreSQL's for that type
# (NaN greatest, ±infinity at the ends, timestamptz as instants …).  Filter literals are cast
# once in `validate`; row values are converted at match time.


def _syntax(ct: _ColType, text: str) -> FilterError:
    return FilterError(f'invalid input syntax for type {ct.display}: "{text}"')


_INT_RE = re.compile(r"\s*[+-]?\d+\s*", re.ASCII)
_NUM_RE = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*", re.ASCII)
_SPECIAL_FLOAT = {"nan": "nan", "infinity": "inf", "+infinity": "inf", "-infinity": "-inf",
                  "inf": "inf", "+inf": "inf", "-inf": "-inf"}  # fmt: skip


def _cast_int(ct: _ColType, text: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise _syntax(ct, text)
    value = int(text)
    lo, hi = ct.int_range or (-(2**63), 2**63 - 1)
    if not lo <= value <= hi:
        raise FilterError(f'value "{text}" is out of range for type {ct.display}')
    return value


def _cast_float(ct: _ColType, text: str) -> float:
    special = _SPECIAL_FLOAT.get(text.strip().lower())
    if special is not None:
        return float(special)
    if not _NUM_RE.fullmatch(text):
        raise _syntax(ct, text)
    value = float(text)
    if abs(value) > (ct.float_max or _FLOAT_MAX["float8"]):
        raise FilterError(f'"{text.strip()}" is out of range for type {ct.display}')
    return value


def _cast_numeric(ct: _ColType, text: str) -> Decimal:
    special = _SPECIAL_FLOAT.get(text.strip().lower())
    if special is not None:
        return Decimal(special)
    if not _NUM_RE.fullmatch(text):
        raise _syntax(ct, text)
    return Decimal(text.strip())


def _cast_bool(ct: _ColType, text: str) -> bool:
    # PostgreSQL's boolin: trimmed, case-insensitive, any unambiguous prefix of true/false/yes/no,
    # "on"/"off" (at least two letters), and exactly "1"/"0".
    s = text.strip().lower()
    if s and ("true".startswith(s) or "yes".startswith(s) or s == "on" or s == "1"):
        return True
    if s and ("false".startswith(s) or "no".startswith(s) or s in ("of", "off") or s == "0"):
        return False
    raise _syntax(ct, text)


_UUID_RE = re.compile(r"[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}", re.ASCII)


def _cast_uuid(ct: _ColType, text: str) -> uuid.UUID:
    body = text[1:-1] if text.startswith("{") and text.endswith("}") else text
    if not _UUID_RE.fullmatch(body):
        raise _syntax(ct, text)
    return uuid.UUID(hex=body.replace("-", ""))


_TZ = r"(?P<tz>Z|UTC|GMT|[+-]\d{1,2}(?::?\d{2}(?::?\d{2})?)?)"
_DATE_RE = r"(?P<y>\d{4,})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})"
_TIME_RE = r"(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d*))?)?"
_TIMESTAMP_RE = re.compile(rf"\s*{_DATE_RE}(?:(?:T|\s+){_TIME_RE})?\s*{_TZ}?\s*", re.ASCII | re.IGNORECASE)
_TIMEONLY_RE = re.compile(rf"\s*{_TIME_RE}\s*{_TZ}?\s*", re.ASCII | re.IGNORECASE)
_RELATIVE = ("now", "today", "tomorrow", "yesterday")
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)


_OFFSET_RE = re.compile(r"([+-])(\d{1,2})(?::?(\d{2})(?::?(\d{2}))?)?", re.ASCII)


def _tz_offset(tz: str | None) -> timezone | None:
    """``+02``, ``+0530``, ``-05:30``, ``Z``/``UTC``/``GMT`` → a fixed offset."""
    if tz is None:
        return None
    if tz.upper() in ("Z", "UTC", "GMT"):
        return timezone.utc
    m = _OFFSET_RE.fullmatch(tz)
    if m is None:
        raise ValueError(tz)
    hh, mm, ss = int(m[2]), int(m[3] or 0), int(m[4] or 0)
    if hh > 15 or mm > 59 or ss > 59:  # PostgreSQL's limit is ±15:59:59
        raise ValueError(tz)
    seconds = (hh * 60 + mm) * 60 + ss
    return timezone(timedelta(seconds=-seconds if m[1] == "-" else seconds))


def _frac_to_us(frac: str | None) -> int:
    """Fractional seconds rounded to microseconds, as PostgreSQL does (not truncated)."""
    if not frac:
        return 0
    return int((Decimal("0." + frac) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def _special_time_words(ct: _ColType, text: str) -> str:
    s = text.strip().lower()
    if s in _RELATIVE:
        raise FilterError(
            f'"{text.strip()}" is not supported in filters for type {ct.display}: it depends on the current time'
        )
    return s


def _cast_timestamp(ct: _ColType, text: str) -> tuple[int, int]:
    """Timestamps and dates as ``(rank, microseconds since epoch)``; rank is -1/0/1 for ±infinity."""
    s = _special_time_words(ct, text)
    if s in ("infinity", "+infinity"):
        return (1, 0)
    if s == "-infinity":
        return (-1, 0)
    m = _TIMESTAMP_RE.fullmatch("1970-01-01 00:00:00Z" if s == "epoch" else text)
    if m is None:
        raise _syntax(ct, text)
    try:
        hour = int(m["h"] or 0)
        # PostgreSQL accepts 24:00:00 as the end of the day.
        day_carry = hour == 24 and int(m["mi"] or 0) == 0 and int(m["s"] or 0) == 0 and not _frac_to_us(m["f"])
        iso = (
            f"{int(m['y']):04d}-{int(m['mo']):02d}-{int(m['d']):02d}"
            f"T{0 if day_carry else hour:02d}:{int(m['mi'] or 0):02d}:{int(m['s'] or 0):02d}"
        )
        dt = datetime.fromisoformat(iso) + timedelta(days=1 if day_carry else 0, microseconds=_frac_to_us(m["f"]))
        tz = _tz_offset(m["tz"])
    except ValueError:
        raise FilterError(f'date/time field value out of range: "{text.strip()}"') from None
    if ct.kind is _Kind.TIMESTAMPTZ:
        aware = dt.replace(tzinfo=tz or timezone.utc)  # no offset: the UTC session zone
        return (0, (aware - _EPOCH_UTC) // _US)
    if ct.kind is _Kind.DATE:
        return (0, date(dt.year, dt.month, dt.day).toordinal())
    return (0, (dt - _EPOCH) // _US)  # timestamp without time zone ignores a given offset


def _cast_time(ct: _ColType, text: str) -> tuple[int, int]:
    """``time`` as ``(µs since midnight, 0)``; ``timetz`` as ``(UTC µs, seconds west)``.

    PostgreSQL orders ``timetz`` by its UTC instant, then by zone (equal only if both agree).
    """
    s = _special_time_words(ct, text)
    if s == "allballs":
        return (0, 0)
    m = _TIMEONLY_RE.fullmatch(text)
    if m is None:
        raise _syntax(ct, text)
    try:
        t = time.fromisoformat(f"{int(m['h']):02d}:{int(m['mi']):02d}:{int(m['s'] or 0):02d}")
        tz = _tz_offset(m["tz"])
    except ValueError:
        raise FilterError(f'date/time field value out of range: "{text.strip()}"') from None
    local = ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + _frac_to_us(m["f"])
    if local >= 86_400_000_000:
        raise FilterError(f'date/time field value out of range: "{text.strip()}"')
    if ct.kind is _Kind.TIME:
        return (local, 0)
    offset = int((tz or timezone.utc).utcoffset(None).total_seconds())
    return (local - offset * 1_000_000, -offset)


def _cast_bytea(ct: _ColType, text: str) -> bytes:
    if text.startswith("\\x"):
        hexdigits = "".join(text[2:].split())
        try:
            return bytes.fromhex(hexdigits)
        except ValueError:
            raise _syntax(ct, text) from None
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
        elif text[i + 1 : i + 2] == "\\":
            out.append(0x5C)
            i += 2
        elif re.fullmatch(r"[0-3][0-7][0-7]", text[i + 1 : i + 4]):
            out.append(int(text[i + 1 : i + 4], 8))
            i += 4
        else:
            raise _syntax(ct, text)
    return bytes(out)


def _jsonb_key(v: Any) -> tuple[Any, ...]:
    """Total order of jsonb: Object > Array > Boolean > Number > String > Null.

    Objects compare by pair count, then pairs in storage order (keys shorter first); arrays by
    length, then element-wise; numbers numerically (``1.0`` equals ``1``).
    """
    if v is None:
        return (0,)
    if isinstance(v, bool):
        return (3, v)
    if isinstance(v, str):
        return (1, v)
    if isinstance(v, int | Decimal):
        return (2, Decimal(v))
    if isinstance(v, float):
        return (2, Decimal(repr(v)))
    if isinstance(v, list | tuple):
        return (4, len(v), tuple(_jsonb_key(x) for x in v))
    if isinstance(v, Mapping):
        keys = sorted((str(k) for k in v), key=lambda k: (len(k.encode()), k.encode()))
        return (5, len(keys), tuple((k, _jsonb_key(v[k])) for k in keys))
    raise TypeError(f"not a JSON value: {type(v).__name__}")


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _cast_jsonb(ct: _ColType, text: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal, parse_int=Decimal, parse_constant=_reject_constant)
    except ValueError:
        raise FilterError(f'invalid input syntax for type json: "{text}"') from None


def _cast(ct: _ColType, text: str) -> tuple[Any, Any]:
    """Cast a filter literal to the column type: ``(typed value, comparison key)``."""
    k = ct.kind
    if k is _Kind.INT:
        i = _cast_int(ct, text)
        return i, i
    if k is _Kind.FLOAT:
        f = _cast_float(ct, text)
        return f, _float_key(f)
    if k is _Kind.NUMERIC:
        d = _cast_numeric(ct, text)
        return d, _decimal_key(d)
    if k is _Kind.BOOL:
        b = _cast_bool(ct, text)
        return b, b
    if k is _Kind.UUID:
        u = _cast_uuid(ct, text)
        return u, u.int
    if k in (_Kind.DATE, _Kind.TIMESTAMP, _Kind.TIMESTAMPTZ):
        key = _cast_timestamp(ct, text)
        return _timestamp_value(ct, key), key
    if k in (_Kind.TIME, _Kind.TIMETZ):
        tkey = _cast_time(ct, text)
        return _time_value(ct, tkey), tkey
    if k is _Kind.BYTEA:
        raw = _cast_bytea(ct, text)
        return raw, raw
    if k is _Kind.JSONB:
        j = _cast_jsonb(ct, text)
        return j, _jsonb_key(j)
    if k is _Kind.ARRAY:
        assert ct.elem is not None
        items = _parse_array_literal(text, allow_nested=True)
        typed = _cast_array_items(ct.elem, items)
        return typed[0], typed[1]
    if k is _Kind.JSON:
        _cast_jsonb(ct, text)
        return text, None
    return text, _text_key(ct, text)


def _cast_array_items(elem: _ColType, items: list[Any]) -> tuple[list[Any], tuple[Any, ...]]:
    values: list[Any] = []
    keys: list[Any] = []
    for item in items:
        if item is None:
            values.append(None)
            keys.append((1,))  # PostgreSQL orders NULL elements after all others
        elif isinstance(item, list):
            sub_v, sub_k = _cast_array_items(elem, item)
            values.append(sub_v)
            keys.append((0, sub_k))
        else:
            v, key = _cast(elem, item)
            values.append(v)
            keys.append((0, key))
    return values, tuple(keys)


def _timestamp_value(ct: _ColType, key: tuple[int, int]) -> Any:
    rank, us = key
    if rank:
        return "infinity" if rank > 0 else "-infinity"
    if ct.kind is _Kind.DATE:
        return date.fromordinal(us)
    if ct.kind is _Kind.TIMESTAMPTZ:
        return _EPOCH_UTC + timedelta(microseconds=us)
    return _EPOCH + timedelta(microseconds=us)


def _time_value(ct: _ColType, key: tuple[int, int]) -> time:
    utc_us, west = key
    local = utc_us - west * 1_000_000
    sec, us = divmod(local, 1_000_000)
    t = time(sec // 3600, sec // 60 % 60, sec % 60, us)
    return t if ct.kind is _Kind.TIME else t.replace(tzinfo=timezone(timedelta(seconds=-west)))


def _float_key(f: float) -> tuple[int, float]:
    return (1, 0.0) if f != f else (0, f)  # NaN is equal to itself and greatest


def _decimal_key(d: Decimal) -> tuple[int, Decimal]:
    return (1, Decimal(0)) if d.is_nan() else (0, d)


def _text_key(ct: _ColType, s: str) -> str:
    if ct.kind is _Kind.BPCHAR:
        return s.rstrip(" ")  # trailing blanks of character(n) are insignificant
    if ct.kind is _Kind.CITEXT:
        return s.lower()
    return s


class _NoKey:
    """A row value we cannot interpret for the column type: compared like NULL (unknown)."""


_NO_KEY = _NoKey()


def _row_key(ct: _ColType, v: Any) -> Any:
    """Comparison key of a decoded row value (protocol.md §6.2: matched against the typed value)."""
    k = ct.kind
    try:
        if isinstance(v, str) and k not in (_Kind.TEXT, _Kind.BPCHAR, _Kind.CITEXT, _Kind.JSONB, _Kind.JSON):
            # A value the decoder left as text (e.g. "infinity", "NaN"): read it as a literal.
            return _cast(ct, v)[1]
        if k is _Kind.INT:
            return v if isinstance(v, int) and not isinstance(v, bool) else _NO_KEY
        if k is _Kind.FLOAT:
            return _float_key(float(v)) if isinstance(v, int | float | Decimal) and not isinstance(v, bool) else _NO_KEY
        if k is _Kind.NUMERIC:
            if isinstance(v, bool):
                return _NO_KEY
            if isinstance(v, Decimal | int):
                return _decimal_key(Decimal(v))
            return _decimal_key(Decimal(repr(v))) if isinstance(v, float) else _NO_KEY
        if k is _Kind.BOOL:
            return v if isinstance(v, bool) else _NO_KEY
        if k is _Kind.UUID:
            return v.int if isinstance(v, uuid.UUID) else _NO_KEY
        if k in (_Kind.DATE, _Kind.TIMESTAMP, _Kind.TIMESTAMPTZ):
            return _datetime_key(ct, v)
        if k in (_Kind.TIME, _Kind.TIMETZ):
            return _time_key(ct, v)
        if k is _Kind.BYTEA:
            return bytes(v) if isinstance(v, bytes | bytearray | memoryview) else _NO_KEY
        if k is _Kind.JSONB:
            return _jsonb_key(v)
        if k is _Kind.ARRAY:
            return _array_key(ct, v)
        if k is _Kind.JSON:
            return _NO_KEY
        return _text_key(ct, v if isinstance(v, str) else _as_text(v))
    except (FilterError, TypeError, ValueError, InvalidOperation):
        return _NO_KEY


def _as_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _datetime_key(ct: _ColType, v: Any) -> Any:
    if isinstance(v, datetime):
        if ct.kind is _Kind.DATE:
            return (0, v.date().toordinal())
        if ct.kind is _Kind.TIMESTAMPTZ:
            aware = v if v.tzinfo is not None else v.replace(tzinfo=timezone.utc)
            return (0, (aware - _EPOCH_UTC) // _US)
        return (0, (v.replace(tzinfo=None) - _EPOCH) // _US)
    if isinstance(v, date):
        if ct.kind is _Kind.DATE:
            return (0, v.toordinal())
        return _datetime_key(ct, datetime(v.year, v.month, v.day))
    return _NO_KEY


def _time_key(ct: _ColType, v: Any) -> Any:
    if not isinstance(v, time):
        return _NO_KEY
    local = ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    if ct.kind is _Kind.TIME:
        return (local, 0)
    off = v.utcoffset()
    offset = int(off.total_seconds()) if off is not None else 0
    return (local - offset * 1_000_000, -offset)


def _array_key(ct: _ColType, v: Any) -> Any:
    assert ct.elem is not None
    if not isinstance(v, list | tuple):
        return _NO_KEY
    keys: list[Any] = []
    for item in v:
        if item is None:
            keys.append((1,))
        elif isinstance(item, list | tuple):
            sub = _array_key(ct, item)
            if sub is _NO_KEY:
                return _NO_KEY
            keys.append((0, sub))
        else:
            k = _row_key(ct.elem, item)
            if k is _NO_KEY:
                return _NO_KEY
            keys.append((0, k))
    return tuple(keys)


# =============================================================================================
# Validation (the reference's subscription trigger, protocol.md §6.2)
# =============================================================================================

_TEXTUAL = (_Kind.TEXT, _Kind.BPCHAR, _Kind.CITEXT)


def validate(conds: Sequence[Condition], columns: Mapping[str, str]) -> tuple[TypedCondition, ...]:
    """Check conditions against the subscriber-visible columns (name → ``pg_type`` name).

    Raises :class:`FilterError` with the message of the first offending condition.
    """
    return tuple(_validate_one(c, columns) for c in conds)


def _validate_one(c: Condition, columns: Mapping[str, str]) -> TypedCondition:
    if c.column not in columns:
        raise FilterError(f"invalid column for filter {c.column}")
    pg_type = columns[c.column]
    ct = _col_type(pg_type)

    def typed(value: Any, key: Any = None, pattern: Pattern | None = None) -> TypedCondition:
        return TypedCondition(c.column, c.op, c.negated, pg_type, value, ct, key, pattern)

    if c.op == "is":
        if c.value not in _IS_VALUES:
            raise FilterError("invalid value for is filter: must be null, true, false, or unknown")
        if c.value != "null" and ct.kind is not _Kind.BOOL:
            raise FilterError(f"is {c.value} filter requires a boolean column, got {ct.display}")
        return typed(c.value)
    if ct.kind is _Kind.JSON:
        # PostgreSQL has no equality or ordering for `json`; only IS NULL works on it.
        raise FilterError(f"operator {c.op} is not supported for column type json (use jsonb)")
    if c.op in ("like", "ilike", "match", "imatch"):
        if ct.kind not in _TEXTUAL:
            raise FilterError(f"operator {c.op} requires a text-compatible column type, got {ct.display}")
        assert isinstance(c.value, str)
        try:
            if c.op in ("like", "ilike"):
                return typed(c.value, pattern=compile_like(c.value, ignore_case=c.op == "ilike"))
            return typed(c.value, pattern=compile_regex(c.value, c.op))
        except PatternError as err:
            raise FilterError(str(err)) from None
    if c.op == "in":
        if ct.kind is _Kind.ARRAY:
            raise FilterError(f"operator in is not supported for array column type {ct.display}")
        assert isinstance(c.value, tuple)
        if len(c.value) > MAX_IN_ITEMS:
            raise FilterError(f"too many values for `in` filter. Maximum {MAX_IN_ITEMS}")
        cast = [None if item is None else _cast(ct, item) for item in c.value]
        return typed(
            tuple(None if x is None else x[0] for x in cast),
            tuple(None if x is None else x[1] for x in cast),
        )
    assert isinstance(c.value, str)
    value, key = _cast(ct, c.value)
    return typed(value, key)


# =============================================================================================
# Matching (SQL three-valued logic, protocol.md §6.2)
# =============================================================================================

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: bool(a == b),
    "neq": lambda a, b: bool(a != b),
    "lt": lambda a, b: bool(a < b),
    "lte": lambda a, b: bool(a <= b),
    "gt": lambda a, b: bool(a > b),
    "gte": lambda a, b: bool(a >= b),
}


def matches(conds: Sequence[TypedCondition], row: Mapping[str, Any]) -> bool:
    """True when every condition is TRUE for ``row`` (column → decoded Python value).

    A column missing from ``row`` (e.g. an unchanged TOAST value) fails its condition; NULL or
    an uninterpretable value makes a condition UNKNOWN, which does not match either.
    """
    return all(c.column in row and _evaluate(c, row[c.column]) is True for c in conds)


def _evaluate(c: TypedCondition, v: Any) -> bool | None:
    """Three-valued result of one condition (``None`` is SQL NULL)."""
    if c.op == "is":
        if c.value in ("null", "unknown"):
            res = v is None
        else:
            res = v is not None and _row_key(c._type, v) is (c.value == "true")
        return not res if c.negated else res  # IS NOT …: never NULL
    if c.op == "isdistinct":
        if v is None:
            distinct = True
        else:
            k = _row_key(c._type, v)
            distinct = k is _NO_KEY or k != c._key
        return distinct != c.negated  # not. → IS NOT DISTINCT FROM
    res3 = _evaluate_strict(c, v)
    if res3 is None:
        return None
    return not res3 if c.negated else res3


def _evaluate_strict(c: TypedCondition, v: Any) -> bool | None:
    if v is None:
        return None
    if c._pattern is not None:
        text = _pattern_subject(c, v)
        if text is None:
            return None
        return c._pattern.matches(text)
    k = _row_key(c._type, v)
    if k is _NO_KEY:
        return None
    if c.op == "in":
        # x = ANY(array): TRUE if some item equals, else NULL if some item is NULL, else FALSE.
        if any(item is not None and item == k for item in c._key):
            return True
        return None if any(item is None for item in c._key) else False
    return _COMPARE[c.op](k, c._key)


def _pattern_subject(c: TypedCondition, v: Any) -> str | None:
    if not isinstance(v, str):
        return None if isinstance(v, list | dict | bytes) else _as_text(v)
    return v.rstrip(" ") if c._type.kind is _Kind.BPCHAR else v
