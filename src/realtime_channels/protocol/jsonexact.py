"""JSON from untrusted peers: bounded nesting and integers kept exactly (sans-I/O).

Two things orjson does not do for a relay:

* **Nesting.** orjson parses up to 1,024 levels but serialises at most 254, so a payload between
  the two is accepted and then cannot be sent to anyone (or stored, or shared with other nodes).
  Input nested deeper than :data:`MAX_DEPTH` levels is refused here, at the door.
* **Integers beyond 64 bits.** orjson reads them as floats (``18446744073709551616`` becomes
  ``1.8446744073709552e+19``), which would alter the payload a relay passes on.  Text that may
  hold one (a run of 19 or more digits) is parsed again with the standard library, keeping such
  integers as ``orjson.Fragment`` of their original digits, so they are written back verbatim.

The cost for ordinary frames is two ``count`` calls, one ``translate`` and one substring search,
all in C and linear (a regular expression for the digit run took ~40 ns per character: up to a
second of the event loop for one 5 MB frame).
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

__all__ = ["MAX_DEPTH", "JsonError", "depth_exceeds", "loads"]

#: deepest nesting accepted in one JSON document (objects and arrays), whole frame included
MAX_DEPTH: Final = 128
_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1
#: ``bytes.translate`` table: every ASCII digit becomes ``0``, every other byte ``.``
_DIGITS_AS_ZERO: Final = bytes(0x30 if 0x30 <= i <= 0x39 else 0x2E for i in range(256))
#: the shortest run of digits that may be an integer beyond 64 bits
_LONG_RUN: Final = b"0" * 19


class JsonError(ValueError):
    """Not JSON, or nested too deeply (``too_deep``); ``str()`` says which."""

    def __init__(self, message: str, *, too_deep: bool = False, value: Any = None) -> None:
        super().__init__(message)
        self.too_deep = too_deep
        #: the parsed document when it was too deep but still parsed (to answer the frame)
        self.value = value


def _exact_int(text: str) -> Any:
    value = int(text)
    if _INT64_MIN <= value <= _UINT64_MAX:
        return value
    return orjson.Fragment(text)


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when ``value`` nests objects/arrays more than ``limit`` levels deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _long_digit_run(raw: bytes) -> bool:
    """Whether ``raw`` holds 19 ASCII digits in a row (JSON numbers are ASCII digits only)."""
    return _LONG_RUN in raw.translate(_DIGITS_AS_ZERO)


def loads(data: str | bytes | bytearray | memoryview, *, max_depth: int | None = MAX_DEPTH) -> Any:
    """Parse untrusted JSON; raise :class:`JsonError` for invalid or too deeply nested input.

    ``max_depth=None`` is for JSON this server wrote itself (what nodes send each other): it
    wraps accepted payloads in a few more levels, and orjson bounded its nesting when it wrote it.
    """
    raw = bytes(data) if isinstance(data, bytearray | memoryview) else data
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise JsonError(f"JSON nested more than {MAX_DEPTH} levels deep", too_deep=True) from None
        raise JsonError("not valid JSON") from None
    if isinstance(raw, str):
        brackets = raw.count("{") + raw.count("[")
        long_digits = _long_digit_run(raw.encode("utf-8", "surrogatepass"))
    else:
        brackets = raw.count(b"{") + raw.count(b"[")
        long_digits = _long_digit_run(raw)
    if max_depth is not None and brackets > max_depth and depth_exceeds(value, max_depth):
        raise JsonError(f"JSON nested more than {max_depth} levels deep", too_deep=True, value=value)
    if long_digits:
        value = json.loads(raw, parse_int=_exact_int)
    return value
