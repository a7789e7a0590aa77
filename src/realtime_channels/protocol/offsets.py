"""Offsets of postgres changes (protocol.md §4.10; sans-I/O).

A change's offset is ``"%016X-%08X" % (end_lsn, index)``: the end LSN of its transaction's
commit and its index in the transaction.  Offsets grow strictly in commit order over the whole
database, hence on every topic too, and compare as strings in the same order.
"""

from __future__ import annotations

import re

__all__ = ["Position", "format_offset", "parse_offset"]

Position = tuple[int, int]  # (end_lsn, change index)

_OFFSET_RE = re.compile(r"^([0-9A-F]{16})-([0-9A-F]{8})$")


def format_offset(end_lsn: int, index: int) -> str:
    return f"{end_lsn:016X}-{index:08X}"


def parse_offset(text: object) -> Position | None:
    """The position an offset names, or ``None`` when ``text`` is not an offset."""
    if not isinstance(text, str) or (m := _OFFSET_RE.match(text)) is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)
