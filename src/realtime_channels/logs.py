"""The server log: one line per record, whatever peers put in the texts it quotes.

Log lines quote what peers send — a token's ``kid``, a topic, a binding's parameters — and a
peer can put a newline there, then text that reads like a log line of its own.  Every message is
therefore written on one line, its control characters escaped (``\\n``, ``\\x1b``…); tracebacks
are formatted apart from the message and keep their lines.

aiohttp logs every request it cannot parse (a malformed ``Content-Length``, a bad chunk, a
request line too long, a body its ``Content-Encoding`` does not decode) at ERROR with a
traceback, although the fault is the peer's and the peer has been answered 400.  Such records
become one INFO line naming the problem.

``REALTIME_LOG_FORMAT=json`` writes each record as one JSON object per line instead
(``JsonFormatter``): the message is quoted by JSON, whose escapes keep it on one line, and the
context of the record — the socket, the topic, the HTTP request — comes from context variables
(``bind``), which asyncio copies into every task a handler starts.  Text lines do not show that
context and stay as they were.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

__all__ = ["BadRequestsQuiet", "JsonFormatter", "OneLine", "bind", "configure", "request_id", "set_fields", "socket_id"]

#: The context fields of a JSON record, in the order they are written.  ``tenant`` is reserved
#: for a server that serves several projects; it is written only when known.
CONTEXT_FIELDS = ("socket_id", "topic", "request_id", "tenant")
_CONTEXT: dict[str, ContextVar[str | None]] = {name: ContextVar(f"realtime_log_{name}", default=None)
                                               for name in CONTEXT_FIELDS}
#: the topic of the frame being handled: set and reset directly where every frame passes
TOPIC = _CONTEXT["topic"]
#: tells this process's sockets apart from another's (workers, restarts) in ``socket_id``
_PROCESS = secrets.token_hex(4)
#: an ``X-Request-Id`` longer than this, or with other than these characters, is replaced
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

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


def socket_id(conn_id: int) -> str:
    """A socket's id in logs: this process's tag and the connection's number (``conn=`` in
    the messages), so it is unique across workers and restarts."""
    return f"{_PROCESS}-{conn_id}"


def request_id(header: str | None) -> str:
    """An HTTP request's id: the caller's ``X-Request-Id`` when it is a plausible id (a proxy
    in front usually sets one), else a new one."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def set_fields(**fields: str | None) -> None:
    """Context fields for the rest of the current context: for a context that belongs to one
    socket (or one task) and ends with it, where a ``with bind(...)`` block cannot span it."""
    for name, value in fields.items():
        _CONTEXT[name].set(value)


@contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Context fields for the records logged inside the block, and in the tasks started there."""
    tokens = [(_CONTEXT[name], _CONTEXT[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


#: escaped beyond what ``json.dumps`` escapes, so that no reader sees a line break inside a
#: record: DEL and the C1 controls (NEL), and the Unicode line and paragraph separators
_BREAKS = re.compile(r"[\x7f-\x9f\u2028\u2029]")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``timestamp`` (ISO-8601, UTC), ``level``, ``logger``,
    ``message``, the context fields that are set, and ``exc_info`` (the traceback, as one
    string) when there is one.  A field passed in ``extra=`` wins over the context's."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, str] = {
            "timestamp": when.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or _CONTEXT[name].get()
            if value is not None:
                out[name] = str(value)
        if record.exc_info:
            out["exc_info"] = record.exc_text or self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        text = json.dumps(out, ensure_ascii=False)
        return _BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def configure(level: str, fmt: str = "text") -> None:
    """The server's logging: to stderr at ``level``, one line per record — text, or one JSON
    object per line with ``fmt="json"``."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.addFilter(OneLine())
    logging.getLogger("aiohttp.server").addFilter(BadRequestsQuiet())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
