"""Replication stream framing (sans-I/O; PostgreSQL "Streaming Replication Protocol"): the
CopyData payloads of a walsender in COPY_BOTH mode — ``XLogData`` ('w'), ``Primary keepalive``
('k') and our ``Standby status update`` ('r') — plus LSN and commit-time formatting.
``pgoutput`` re-exports the public names.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final

from .values import PgOutputError

__all__ = ["PrimaryKeepalive", "XLogData", "commit_timestamp", "decode_copy_data", "encode_standby_status",
           "lsn_to_str", "str_to_lsn"]


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
