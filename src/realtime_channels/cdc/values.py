"""Typed JSON values for ``postgres_changes`` (sans-I/O; protocol.md §6.5, design.md §3).

Converters chosen by type OID turn the walsender's text bytes into values whose ``orjson.dumps``
matches PostgreSQL's ``to_jsonb``, assuming the walsender session runs with ``DateStyle=ISO``
and ``TimeZone=UTC`` (postgres-cdc.md "Types").  The rules were checked against a real
PostgreSQL 15 (``tests/unit/data/pgoutput``).  ``pgoutput`` re-exports the public names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import orjson

from ..errors import InternalError

__all__ = ["Converter", "PgOutputError", "builtin_type_oid", "make_converter", "parse_array_literal", "type_name"]


class PgOutputError(InternalError):
    """Bytes from the walsender that do not decode: truncated, trailing or unknown input.

    An ``InternalError`` because the peer here is our own database; clients only ever see the
    generic text (the error tree, errors/)."""


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
