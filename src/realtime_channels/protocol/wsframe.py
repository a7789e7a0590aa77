"""RFC 6455 §5.2 server-to-client data frames, built once and written to many transports.

Fan-out encodes each message once per wire format (protocol.md §4.3); framing it here once as
well lets every subscriber's transport write the same ready-made bytes.
"""

from __future__ import annotations

import struct

__all__ = ["build_control_frame", "build_frame", "build_text_frame"]

_FIN_TEXT = 0x81  # FIN + opcode 1 (text)
_FIN_BINARY = 0x82  # FIN + opcode 2 (binary)
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def build_frame(data: str | bytes) -> bytes:
    """One unfragmented, unmasked frame: ``str`` -> UTF-8 text frame, ``bytes`` -> binary frame.

    Servers never mask (RFC 6455 §5.1), so the MASK bit is 0 and there is no masking key.
    """
    if isinstance(data, str):
        return _frame(_FIN_TEXT, data.encode("utf-8"))
    return _frame(_FIN_BINARY, data)


def build_text_frame(utf8: bytes) -> bytes:
    """A text frame of text already encoded as UTF-8 (orjson's output)."""
    return _frame(_FIN_TEXT, utf8)


def build_control_frame(opcode: int, payload: bytes) -> bytes:
    """A close (8), ping (9) or pong (10) frame; control payloads are at most 125 bytes (§5.5)."""
    return _frame(0x80 | opcode, payload[:125])


def _frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    # RFC 6455 §5.2: 7-bit length up to 125, then 126 + 16-bit, then 127 + 64-bit.
    if n <= 125:
        header = bytes((first, n))
    elif n <= 0xFFFF:
        header = _LEN16.pack(first, 126, n)
    else:
        header = _LEN64.pack(first, 127, n)
    return header + payload
