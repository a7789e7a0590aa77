"""The server log: one line per record, whatever peers put in the texts it quotes.

Log lines quote what peers send — a token's ``kid``, a topic, a binding's parameters — and a
peer can put a newline there, then text that reads like a log line of its own.  Every message is
therefore written on one line, its control characters escaped (``\\n``, ``\\x1b``…); tracebacks
are formatted apart from the message and keep their lines.

aiohttp logs every request it cannot parse (a malformed ``Content-Length``, a bad chunk, a
request line too long, a body its ``Content-Encoding`` does not decode) at ERROR with a
traceback, although the fault is the peer's and the peer has been answered 400.  Such records
become one INFO line naming the problem.
"""

from __future__ import annotations

import logging
import re
import sys

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

__all__ = ["BadRequestsQuiet", "OneLine", "configure"]

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


#: the bytes aiohttp quotes from the offending request (a header line may hold a token)
_QUOTED = re.compile(r"(bytearray\()?b(['\"]).*?\2\)?")


class BadRequestsQuiet(logging.Filter):
    """aiohttp's report of a request it could not parse becomes one INFO line, no traceback,
    and without the request bytes it quotes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RequestPayloadError):  # a body that does not decode, met again after the answer
            exc = exc.__cause__
        if not isinstance(exc, HttpProcessingError):
            return True
        detail = _QUOTED.sub("…", " ".join(str(exc.message).split()))
        record.msg, record.args = "bad HTTP request (%s): %s %s", (record.getMessage(), exc.code, detail)
        record.exc_info, record.exc_text = None, None
        level = min(record.levelno, logging.INFO)
        record.levelno, record.levelname = level, logging.getLevelName(level)
        return logging.getLogger(record.name).isEnabledFor(level)


def configure(level: str) -> None:
    """The server's logging: to stderr at ``level``, one line per record."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(OneLine())
    logging.getLogger("aiohttp.server").addFilter(BadRequestsQuiet())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
