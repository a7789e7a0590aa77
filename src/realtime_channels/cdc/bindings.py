"""postgres_changes bindings as the router sees them (sans-I/O): parsing the §6.1 parameters and
the validated subscription records (``Sub``) that ``subscriptions`` builds against the catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .. import errors
from ..hub import Subscriber
from ..protocol.codec import Message
from .filters import Condition, TypedCondition, parse_filter
from .types import Snapshot

__all__ = ["EVENTS", "Binding", "Peer", "Sub", "parse_binding", "parse_conditions"]

EVENTS = ("INSERT", "UPDATE", "DELETE")


class Peer(Subscriber, Protocol):
    """A connection: it takes pre-built frames (fan-out) and single messages (``system``)."""

    def send(self, msg: Message) -> None: ...


@dataclass(frozen=True, slots=True)
class Binding:
    """One ``config.postgres_changes`` entry, normalised for matching (the echo keeps the original)."""

    id: int
    event: str  # "*", "INSERT", "UPDATE", "DELETE"
    schema: str
    table: str
    filter_text: str | None
    select: tuple[str, ...] | None
    #: ``snapshot: true`` (§6.10): the rows matching it now are sent first, as INSERTs
    snapshot: bool = False

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.schema or "*" in self.table

    def describe(self) -> str:
        """The bracketed parameter list of the §6.3 messages (diagnostic only)."""
        filters = f"[{self.filter_text}]" if self.filter_text else "[]"
        select = "nil" if self.select is None else "[" + ", ".join(self.select) + "]"
        return f"[event: {self.event}, schema: {self.schema}, table: {self.table}, filters: {filters}, select: {select}]"


def _event(raw: Mapping[str, Any]) -> str:
    """§6.1: case-insensitive; absent (or null) means ``*``.  Anything else is refused: the
    reference silently reads it as ``*``, which turns a typo such as ``INSERTS`` into every
    change of the table."""
    event = raw.get("event")
    if event is None or event == "*":
        return "*"
    if isinstance(event, str) and event.upper() in EVENTS:
        return event.upper()
    raise errors.UnknownEvent(event if isinstance(event, str) else orjson.dumps(event).decode())


def parse_binding(raw: Mapping[str, Any]) -> Binding:
    """§6.1 parameters → Binding; raises ``errors.SubscribeError`` with the reference's messages."""
    schema, table = raw.get("schema"), raw.get("table")
    if not isinstance(schema, str) and not isinstance(table, str):
        raise errors.SubscriptionParamsMissing(_params_text(raw))
    event = _event(raw)
    schema = schema if isinstance(schema, str) else "public"
    table = table if isinstance(table, str) else "*"
    select = raw.get("select")
    if select is not None:
        if not isinstance(select, list) or not all(isinstance(c, str) for c in select):
            raise errors.SelectParamsInvalid()
        if "*" in schema or "*" in table:
            raise errors.SelectOnWildcard()
    flt = raw.get("filter")
    return Binding(
        id=int(raw["id"]),
        event=event,
        schema=schema,
        table=table,
        filter_text=flt if isinstance(flt, str) and flt.strip() else None,
        select=tuple(select) if isinstance(select, list) else None,
        snapshot=raw.get("snapshot") is True,
    )


def _params_text(raw: Mapping[str, Any]) -> str:
    return "%{" + ", ".join(f'"{k}" => {orjson.dumps(v).decode()}' for k, v in raw.items() if k != "id") + "}"


def parse_conditions(b: Binding) -> tuple[Condition, ...]:
    """The binding's filter, parsed (§6.2); ``errors.FilterError`` on a malformed one."""
    return parse_filter(b.filter_text)


@dataclass(slots=True, eq=False)
class Sub:
    """A validated binding of one channel on one table."""

    peer: Peer
    topic: str
    table_key: tuple[str, str]
    binding: Binding
    conds: tuple[TypedCondition, ...]
    role: str
    claims: Mapping[str, Any]
    cohort: str
    #: the channel asked for offsets (``postgres_changes_options.resume``, §4.10): its
    #: messages carry one as ``ref``
    offsets: bool = False
    #: after a snapshot (§6.10): the transactions it contains, not sent again
    seen: Snapshot | None = None
    #: the channel this subscription belongs to (a connection has one channel per topic)
    channel_key: tuple[int, str] = field(init=False)

    def __post_init__(self) -> None:
        self.channel_key = (id(self.peer), self.topic)
