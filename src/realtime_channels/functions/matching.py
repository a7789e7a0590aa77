"""Which triggers an event matches, and the event as a function receives it (pure)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from ..cdc.filters import FilterError, TypedCondition, matches, validate
from .config import Trigger
from .events import RealtimeEvent, glob_match, now_iso
from .targets import dumps

log = logging.getLogger("realtime_channels.functions.engine")

#: postgres filters validated per column set: conditions, or None when they do not apply
TypedCache = dict[tuple[tuple[str, str], ...], tuple[TypedCondition, ...] | None]


def trigger_matches(t: Trigger, typed: TypedCache, ev: RealtimeEvent) -> bool:
    """Whether trigger ``t`` wants event ``ev`` (topic, event, schema, table and filter)."""
    if not glob_match(t.topic, ev.topic) or not glob_match(t.event, ev.event):
        return False
    if t.on != "postgres":
        return True
    if not glob_match(t.schema, ev.schema) or not glob_match(t.table, ev.table):
        return False
    return not t.conditions or _filter_matches(t, typed, ev)


def _filter_matches(t: Trigger, typed_cache: TypedCache, ev: RealtimeEvent) -> bool:
    """The postgres_changes filter grammar (protocol.md §6.2) against the change's row: the
    new record, or the old one for DELETE, typed by the change's ``columns``."""
    data = ev.payload if isinstance(ev.payload, Mapping) else {}
    row = data.get("old_record" if ev.event == "DELETE" else "record")
    if not isinstance(row, Mapping):
        return False
    cols = data.get("columns")
    if isinstance(cols, list) and cols:
        columns = {str(c.get("name")): str(c.get("type")) for c in cols if isinstance(c, Mapping)}
    else:
        columns = {str(k): "text" for k in row}
    key = tuple(sorted(columns.items()))
    if key not in typed_cache:
        if len(typed_cache) > 64:
            typed_cache.clear()  # tables rarely change shape; bound the cache anyway
        try:
            typed_cache[key] = validate(t.conditions, columns)
        except FilterError as exc:
            log.warning("functions: trigger %s: filter %r does not apply to %s.%s: %s", t.name,
                        t.filter, ev.schema, ev.table, exc.message)
            typed_cache[key] = None
    typed = typed_cache[key]
    return typed is not None and matches(typed, row)


def snapshot(ev: RealtimeEvent) -> dict[str, Any] | None:
    """The event object without its id, as JSON values: the caller may reuse its payload
    object after ``observe`` returns, and a durable row must hold exactly what is sent."""
    event: dict[str, Any] = {
        "type": ev.type,
        "topic": ev.topic,
        "event": ev.event,
        "payload": ev.payload,
        "claims": ev.claims,
        "timestamp": now_iso(),
    }
    if ev.type == "postgres":
        event["schema"] = ev.schema
        event["table"] = ev.table
    try:
        copy: dict[str, Any] = orjson.loads(dumps(event))
    except TypeError as exc:
        log.error("functions: dropping a %s event on %s: its payload is not JSON (%s)", ev.type, ev.topic, exc)
        return None
    return copy
