"""The functions config file: triggers and gates, validated at start-up.

A TOML file (``REALTIME_FUNCTIONS_CONFIG`` / ``--functions-config``)::

    python_path = ["."]          # optional; relative to this file; where `python` targets live

    [defaults]                   # optional; applies to every trigger (gates default to 2 s)
    timeout = 10.0               # seconds per attempt
    concurrency = 4              # deliveries in flight per trigger, across topics
    max_attempts = 8             # then the event goes to the dead-letter list
    backoff_base = 0.5           # seconds; doubles per attempt ...
    backoff_max = 60.0           # ... up to this

    [queue]                      # optional
    max_pending = 10000          # queued deliveries per trigger before new ones are dead-lettered
    dlq_max = 10000              # in-memory dead letters kept (durable mode keeps all)
    poll_interval = 2.0          # durable mode: how often `functions dlq replay` is picked up

    [[trigger]]
    name = "respond"
    on = "broadcast"             # broadcast, presence.join, presence.leave, channel.join,
                                 # channel.leave, connection.open, connection.close, postgres
    topic = "room*"              # glob on the sub-topic (no "realtime:" prefix)
    event = "message"            # glob; broadcast and postgres only
    python = "respond:handle"    # or url = "https://…/functions/v1/respond"

    [[gate]]
    kind = "authorize_send"      # or authorize_join
    topic = "moderated:*"
    url = "http://127.0.0.1:9000/moderate"
    timeout = 0.5
    fail_open = false

Everything is checked before the server starts; a mistake is reported as
``<file>:<line>: <what>`` with the line of the offending key (``tomllib`` reports no positions
for values, so :class:`_Lines` finds them in the text).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .. import errors
from ..cdc.filters import Condition, FilterError, parse_filter
from . import tomlcheck as tc

__all__ = [
    "GATE_KINDS",
    "ON_VALUES",
    "POSTGRES_EVENTS",
    "FunctionsConfig",
    "Gate",
    "Handler",
    "Trigger",
    "load_config",
    "resolve_python",
]

#: The `on` values, in the order the documentation lists them.
ON_VALUES: tuple[str, ...] = (
    "broadcast", "presence.join", "presence.leave", "channel.join", "channel.leave",
    "connection.open", "connection.close", "postgres",
)  # fmt: skip
GATE_KINDS: tuple[str, ...] = ("authorize_join", "authorize_send")
POSTGRES_EVENTS: tuple[str, ...] = ("INSERT", "UPDATE", "DELETE")
#: Kinds whose `event` glob means something (a broadcast's user event, a change's operation).
_EVENT_KINDS = ("broadcast", "postgres")

#: An in-process function: ``async def f(event: dict, ctx) -> Any``.
Handler = Callable[[dict[str, Any], Any], Awaitable[Any]]

_TRIGGER_KEYS = frozenset(
    ("name", "on", "topic", "event", "schema", "table", "filter", "url", "python", "timeout",
     "concurrency", "max_attempts", "backoff_base", "backoff_max")
)  # fmt: skip
_GATE_KEYS = frozenset(("name", "kind", "topic", "event", "url", "python", "timeout", "fail_open"))
_DEFAULT_KEYS = frozenset(("timeout", "concurrency", "max_attempts", "backoff_base", "backoff_max"))
_QUEUE_KEYS = frozenset(("max_pending", "dlq_max", "poll_interval"))
_TOP_KEYS = frozenset(("python_path", "defaults", "queue", "trigger", "gate"))

DEFAULT_TIMEOUT = 10.0
DEFAULT_GATE_TIMEOUT = 2.0
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_MAX = 60.0


@dataclass(frozen=True, slots=True)
class Trigger:
    """One ``[[trigger]]``: which realtime events it takes and where they are delivered."""

    name: str
    on: str
    topic: str = "*"
    event: str | None = None
    schema: str | None = None
    table: str | None = None
    filter: str | None = None
    url: str | None = None
    python: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = DEFAULT_CONCURRENCY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    #: parsed `filter` (postgres only); validated against the change's columns when it arrives
    conditions: tuple[Condition, ...] = field(default=(), compare=False, repr=False)
    #: the loaded `python` target
    handler: Handler | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Gate:
    """One ``[[gate]]``: a synchronous allow / deny / rewrite hook with a deadline."""

    kind: str
    topic: str = "*"
    url: str | None = None
    python: str | None = None
    timeout: float = DEFAULT_GATE_TIMEOUT
    fail_open: bool = False
    name: str = ""
    #: authorize_send only: glob on the user event
    event: str | None = None
    handler: Handler | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FunctionsConfig:
    triggers: tuple[Trigger, ...] = ()
    gates: tuple[Gate, ...] = ()
    path: str = ""
    max_pending: int = 10_000
    dlq_max: int = 10_000
    poll_interval: float = 2.0
    python_path: tuple[str, ...] = ()


def load_config(path: str) -> FunctionsConfig:
    """Read and validate a functions config file; raises ``errors.ConfigError`` naming the line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot read the functions config: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.ConfigError(f"{path}: the functions config is not UTF-8") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(tc.toml_error(path, text, exc)) from exc
    return _build(tc.Checker(path, text), data)


def _build(ck: tc.Checker, data: dict[str, Any]) -> FunctionsConfig:
    for key in data:
        if key not in _TOP_KEYS:
            raise ck.fail(ck.lines.line("", 0, key), f"unknown key `{key}`")
    python_path = _python_path(ck, data.get("python_path", ["."]))
    defaults = tc.table(ck, data, "defaults", _DEFAULT_KEYS)
    queue = tc.table(ck, data, "queue", _QUEUE_KEYS)
    max_pending = tc.integer(ck, queue, "max_pending", 10_000, ck.lines.line("queue", 0, "max_pending"), "queue")
    dlq_max = tc.integer(ck, queue, "dlq_max", 10_000, ck.lines.line("queue", 0, "dlq_max"), "queue")
    poll = tc.number(ck, queue, "poll_interval", 2.0, ck.lines.line("queue", 0, "poll_interval"), "queue")
    if poll <= 0:
        raise ck.fail(ck.lines.line("queue", 0, "poll_interval"), "queue: `poll_interval` must be > 0")

    triggers: list[Trigger] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(tc.array(ck, data, "trigger")):
        trig = _trigger(ck, i, item, defaults, python_path)
        if trig.name in seen:
            raise ck.fail(ck.lines.line("trigger", i, "name"),
                          f"trigger '{trig.name}': duplicate name (first at line {seen[trig.name]})")
        seen[trig.name] = ck.lines.line("trigger", i, "name")
        triggers.append(trig)
    gates = [_gate(ck, i, item, python_path) for i, item in enumerate(tc.array(ck, data, "gate"))]
    return FunctionsConfig(tuple(triggers), tuple(gates), ck.path, max_pending, dlq_max, poll, python_path)


def _python_path(ck: tc.Checker, value: Any) -> tuple[str, ...]:
    line = ck.lines.line("", 0, "python_path")
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ck.fail(line, "`python_path` must be a list of directories")
    base = os.path.dirname(os.path.abspath(ck.path))
    out = tuple(os.path.normpath(os.path.join(base, p)) for p in value)
    for p in out:
        if not os.path.isdir(p):
            raise ck.fail(line, f"`python_path`: {p} is not a directory")
    return out


def _trigger(ck: tc.Checker, i: int, item: Mapping[str, Any], defaults: Mapping[str, Any],
             python_path: tuple[str, ...]) -> Trigger:
    def line(key: str | None = None) -> int:
        return ck.lines.line("trigger", i, key)

    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ck.fail(line("name"), f"trigger #{i + 1}: `name` is required (a non-empty string)")
    who = f"trigger '{name}'"
    for key in item:
        if key not in _TRIGGER_KEYS:
            raise ck.fail(line(key), f"{who}: unknown key `{key}`")
    on = item.get("on")
    if on is None:
        raise ck.fail(line(), f"{who}: `on` is required (one of {', '.join(ON_VALUES)})")
    if on not in ON_VALUES:
        raise ck.fail(line("on"), f"{who}: unknown `on` value {on!r} (expected one of {', '.join(ON_VALUES)})")
    topic = tc.string(ck, item, "topic", line("topic"), who) or "*"
    event = tc.string(ck, item, "event", line("event"), who)
    if event is not None and on not in _EVENT_KINDS:
        raise ck.fail(line("event"), f"{who}: `event` applies only to broadcast and postgres triggers")
    schema = tc.string(ck, item, "schema", line("schema"), who)
    table = tc.string(ck, item, "table", line("table"), who)
    filter_text = item.get("filter")
    conditions: tuple[Condition, ...] = ()
    if on == "postgres":
        if schema is None or table is None:
            missing = "schema" if schema is None else "table"
            raise ck.fail(line(), f"{who}: a postgres trigger needs `{missing}`")
        if event is not None:
            event = event.upper()
            if event != "*" and event not in POSTGRES_EVENTS:
                raise ck.fail(line("event"), f"{who}: `event` must be INSERT, UPDATE, DELETE or *, got {event!r}")
        if filter_text is not None:
            if not isinstance(filter_text, str):
                raise ck.fail(line("filter"), f"{who}: `filter` must be a string")
            try:
                conditions = parse_filter(filter_text)
            except FilterError as exc:
                raise ck.fail(line("filter"), f"{who}: {exc.message}") from exc
    else:
        for key in ("schema", "table", "filter"):
            if key in item:
                raise ck.fail(line(key), f"{who}: `{key}` applies only to postgres triggers")
    url, python, handler = _target(ck, item, line, who, python_path)

    def num(key: str, default: float) -> float:
        return tc.number(ck, item, key, float(defaults.get(key, default)), line(key), who)

    def integer(key: str, default: int) -> int:
        return tc.integer(ck, item, key, defaults.get(key, default), line(key), who)

    timeout = num("timeout", DEFAULT_TIMEOUT)
    if timeout <= 0:
        raise ck.fail(line("timeout"), f"{who}: `timeout` must be > 0")
    base, cap = num("backoff_base", DEFAULT_BACKOFF_BASE), num("backoff_max", DEFAULT_BACKOFF_MAX)
    if cap < base:
        raise ck.fail(line("backoff_max"), f"{who}: `backoff_max` ({cap}) is below `backoff_base` ({base})")
    return Trigger(
        name=name, on=on, topic=topic, event=event, schema=schema, table=table,
        filter=filter_text if isinstance(filter_text, str) else None, url=url, python=python,
        timeout=timeout, concurrency=integer("concurrency", DEFAULT_CONCURRENCY),
        max_attempts=integer("max_attempts", DEFAULT_MAX_ATTEMPTS), backoff_base=base, backoff_max=cap,
        conditions=conditions, handler=handler,
    )  # fmt: skip


def _gate(ck: tc.Checker, i: int, item: Mapping[str, Any], python_path: tuple[str, ...]) -> Gate:
    def line(key: str | None = None) -> int:
        return ck.lines.line("gate", i, key)

    name = item.get("name", f"gate #{i + 1}")
    if not isinstance(name, str) or not name.strip():
        raise ck.fail(line("name"), f"gate #{i + 1}: `name` must be a non-empty string")
    who = f"gate '{name}'"
    for key in item:
        if key not in _GATE_KEYS:
            raise ck.fail(line(key), f"{who}: unknown key `{key}`")
    kind = item.get("kind")
    if kind not in GATE_KINDS:
        raise ck.fail(line("kind"), f"{who}: `kind` must be one of {', '.join(GATE_KINDS)}, got {kind!r}")
    topic = tc.string(ck, item, "topic", line("topic"), who) or "*"
    event = tc.string(ck, item, "event", line("event"), who)
    if event is not None and kind != "authorize_send":
        raise ck.fail(line("event"), f"{who}: `event` applies only to authorize_send gates")
    url, python, handler = _target(ck, item, line, who, python_path)
    # Gates keep their own short default: [defaults].timeout is sized for background deliveries.
    timeout = tc.number(ck, item, "timeout", DEFAULT_GATE_TIMEOUT, line("timeout"), who)
    if timeout <= 0:
        raise ck.fail(line("timeout"), f"{who}: `timeout` must be > 0")
    fail_open = item.get("fail_open", False)
    if not isinstance(fail_open, bool):
        raise ck.fail(line("fail_open"), f"{who}: `fail_open` must be true or false")
    return Gate(kind=kind, topic=topic, url=url, python=python, timeout=timeout, fail_open=fail_open,
                name=name, event=event, handler=handler)


def _target(ck: tc.Checker, item: Mapping[str, Any], line: Callable[[str | None], int], who: str,
            python_path: tuple[str, ...]) -> tuple[str | None, str | None, Handler | None]:
    url = item.get("url")
    python = item.get("python")
    if (url is None) == (python is None):
        where = line("python") if url is not None else line(None)
        raise ck.fail(where, f"{who}: exactly one of `url` or `python` is required")
    if url is not None:
        if not isinstance(url, str):
            raise ck.fail(line("url"), f"{who}: `url` must be a string")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ck.fail(line("url"), f"{who}: `url` must be an http(s) URL, got {url!r}")
        return url, None, None
    if not isinstance(python, str):
        raise ck.fail(line("python"), f"{who}: `python` must be a \"module:function\" string")
    try:
        handler = resolve_python(python, python_path)
    except ValueError as exc:
        raise ck.fail(line("python"), f"{who}: {exc}") from exc
    return None, python, handler


def resolve_python(spec: str, python_path: tuple[str, ...] = ()) -> Handler:
    """Import ``module:function`` (``python_path`` first on ``sys.path``); it must be async.

    Raises ``ValueError`` with an operator-facing explanation.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"`python` must look like \"module:function\", got {spec!r}")
    for p in reversed(python_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure refuses the config
        raise ValueError(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable")
    call = target if inspect.isfunction(target) or inspect.ismethod(target) else getattr(target, "__call__", None)
    if not inspect.iscoroutinefunction(call):
        raise ValueError(f"{spec!r} must be an async function (async def)")
    handler: Handler = target
    return handler
