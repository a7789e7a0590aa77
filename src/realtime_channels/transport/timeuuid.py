"""Time-based (RFC 9562 version 1) UUID strings for presence keys, without a system call.

Supabase gives a member that joins without a ``presence.key`` a version-1 UUID, and clients
read it as one.  ``uuid.uuid1()`` asks libuuid (or the MAC address) each time; here the node
field and clock sequence are drawn once per process at random (the multicast bit set, as the
RFC asks for a node that is not a MAC address), and the 100 ns timestamp only moves forward, so
two keys of one process never repeat even when the clock stalls or steps back.
"""

from __future__ import annotations

import os
import time

#: 100 ns intervals between 1582-10-15 (the UUID epoch) and 1970-01-01
_EPOCH_OFFSET = 0x01B21DD213814000
_NODE = int.from_bytes(os.urandom(6), "big") | 0x010000000000
_CLOCK_SEQ = (int.from_bytes(os.urandom(2), "big") & 0x3FFF) | 0x8000  # RFC variant bits 10
_TAIL = f"-{_CLOCK_SEQ:04x}-{_NODE:012x}"
_last = 0


def new_key() -> str:
    """A fresh version-1 UUID in its canonical text form."""
    global _last
    ts = time.time_ns() // 100 + _EPOCH_OFFSET
    if ts <= _last:
        ts = _last + 1
    _last = ts
    return f"{ts & 0xFFFFFFFF:08x}-{(ts >> 32) & 0xFFFF:04x}-{0x1000 | (ts >> 48) & 0x0FFF:04x}{_TAIL}"
