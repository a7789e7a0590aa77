"""The server log: one line per record, whatever peers put in the texts it quotes.

Log lines quote what peers send — a token's ``kid``, a topic, a binding's parameters — and a
peer can put a newline there, then text that reads like a log line of its own.  Every message is
therefore written on one line, its control characters escaped (``\\n``, ``\\x1b``…); tracebacks
are formatted apart from the message and keep their lines.
"""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["OneLine", "configure"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


class OneLine(logging.Filter):
    """Escapes the control characters of a record's message (its traceback is left alone)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _CONTROL.search(message):
            record.msg, record.args = _CONTROL.sub(_escape, message), None
        return True


def configure(level: str) -> None:
    """The server's logging: to stderr at ``level``, one line per record."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(OneLine())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
