"""postgres_changes subscriptions: every channel's bindings, validated against the database
when the channel joins or refreshes its token (protocol.md §6.1, §6.3).

Tables are resolved against the publication, filters parsed and checked against the columns the
subscriber's role may select, the role must exist.  The outcome is one ``system`` message per
(re)subscription; a failure is also logged at warning with its reason.  Valid bindings become
``Sub`` records indexed by table, which the router reads.  The checks run on their own side
connection, so a burst of joins does not hold up routing.

A join that waits for its bindings (protocol.md §3.11) passes ``ready``: it is called once,
instead of the ``system`` message — with ``None`` right after the subscriptions are registered
(before any later change can be routed to them), or with the error that refused them for good.
Transient failures are retried without a word meanwhile.

A channel that resumes (protocol.md §4.10) is registered through ``attach``, which the change
feed supplies: it registers the subscriptions between two routed transactions and sends what
the channel missed before anything routed later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .. import errors
from ..protocol.codec import Message
from . import catalog, router
from .bindings import Binding, Peer, Sub, parse_binding, parse_conditions
from .connections import SideConnection
from .filters import Condition, TypedCondition, validate
from .rls import cohort_key

log = logging.getLogger(__name__)

TOPIC_PREFIX = "realtime:"
RETRY_SECONDS = 5.0
SUBSCRIBED = "Subscribed to PostgreSQL"

TableKey = tuple[str, str]
ChannelKey = tuple[int, str]
#: told once whether a waiting join's subscriptions are live (``None``) or refused for good
Ready = Callable[[errors.SubscribeError | None], None]
#: ``attach(ch, register)``: call ``register()`` (False: the channel is gone) where no
#: transaction is being routed, then send the channel what it missed
Attach = Callable[["ChannelSubs", Callable[[], bool]], Awaitable[None]]


def system(topic: str, join_ref: str | None, status: str, message: str) -> Message:
    payload = {"extension": "postgres_changes", "status": status, "message": message,
               "channel": topic[len(TOPIC_PREFIX):]}
    return Message(topic, "system", payload, ref=None, join_ref=join_ref)


@dataclass(slots=True)
class ChannelSubs:
    peer: Peer
    topic: str
    join_ref: str | None
    bindings: tuple[dict[str, Any], ...]
    claims: Mapping[str, Any]
    subs: list[Sub] = field(default_factory=list)
    generation: int = 0
    retry: asyncio.TimerHandle | None = None
    ready: Ready | None = None
    #: messages carry offsets (§4.10)
    offsets: bool = False
    #: the offset to resume after, for this subscription only (not a token refresh's)
    resume_from: tuple[int, int] | None = None
    #: bindings with ``snapshot: true`` read their snapshot first (§6.10; not on a refresh)
    snapshot: bool = True


class Subscriptions:
    """``ready()`` waits briefly for the change feed and returns ``None`` when it streams, or
    why it does not (for the log; the client is told ``ChangesUnavailable`` and retried)."""

    def __init__(self, *, publication: str, cache: catalog.CatalogCache, conn: SideConnection,
                 ready: Callable[[], Awaitable[str | None]], attach: Attach | None = None) -> None:
        self._publication = publication
        self._cache = cache
        self._conn = conn
        self._ready = ready
        self._attach = attach
        self.channels: dict[ChannelKey, ChannelSubs] = {}
        self.by_table: dict[TableKey, list[Sub]] = {}
        self._fans: dict[TableKey, list[router.Fan]] = {}

    def fans(self, table: TableKey) -> list[router.Fan] | None:
        """The table's subscriptions grouped into fans (rebuilt after a table's subscriptions
        changed, on the next change of that table)."""
        cached = self._fans.get(table)
        if cached is None:
            subs = self.by_table.get(table)
            if not subs:
                return None
            cached = self._fans[table] = router.fans(subs)
        return cached

    def invalidate(self, table: TableKey) -> None:
        """The table's fans are rebuilt on its next change (a subscription's fields changed)."""
        self._fans.pop(table, None)

    def subscribe(self, conn_id: int, peer: Peer, topic: str, join_ref: str | None,
                  bindings: Sequence[dict[str, Any]], claims: Mapping[str, Any], ready: Ready | None = None,
                  offsets: bool = False, resume_from: tuple[int, int] | None = None, snapshot: bool = True) -> None:
        key = (conn_id, topic)
        old = self.channels.get(key)
        generation = old.generation + 1 if old is not None else 0
        self._drop(key)
        ch = ChannelSubs(peer, topic, join_ref, tuple(bindings), claims, generation=generation, ready=ready,
                         offsets=offsets, resume_from=resume_from, snapshot=snapshot)
        self.channels[key] = ch
        asyncio.get_running_loop().create_task(self._subscribe(key, ch))

    def unsubscribe(self, conn_id: int, topic: str) -> None:
        self._drop((conn_id, topic))

    def close(self) -> None:
        for ch in self.channels.values():
            if ch.retry is not None:
                ch.retry.cancel()

    def _drop(self, key: ChannelKey) -> None:
        ch = self.channels.pop(key, None)
        if ch is None:
            return
        if ch.retry is not None:
            ch.retry.cancel()
        for sub in ch.subs:
            self._fans.pop(sub.table_key, None)
            subs = self.by_table.get(sub.table_key)
            if subs is not None and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self.by_table[sub.table_key]

    async def _subscribe(self, key: ChannelKey, ch: ChannelSubs) -> None:
        try:
            resolved = await self._resolve(ch)
        except errors.SubscribeError as err:
            if self.channels.get(key) is not ch:
                return
            self._report_failure(ch, err)
            if ch.ready is None:
                ch.peer.send(system(ch.topic, ch.join_ref, "error", err.message))
            elif not err.transient:
                self._settle(ch, err)
            if err.transient:  # §6.3: transient problems are retried every 5–10 s
                loop = asyncio.get_running_loop()
                ch.retry = loop.call_later(RETRY_SECONDS, lambda: loop.create_task(self._subscribe(key, ch)))
            return
        if self.channels.get(key) is not ch:
            return  # left or re-subscribed while we were validating

        def register() -> bool:
            if self.channels.get(key) is not ch:
                return False
            ch.subs = [sub for _, sub in resolved]
            for table_key, sub in resolved:
                self.by_table.setdefault(table_key, []).append(sub)
                self._fans.pop(table_key, None)
            if ch.ready is not None:
                self._settle(ch, None)  # synchronously: the join's reply precedes any routed change
            else:
                ch.peer.send(system(ch.topic, ch.join_ref, "ok", SUBSCRIBED))
            return True

        if self._attach is not None and (ch.resume_from is not None or (
                ch.snapshot and any(sub.binding.snapshot for _, sub in resolved))):
            await self._attach(ch, register)
        else:
            register()

    @staticmethod
    def _settle(ch: ChannelSubs, err: errors.SubscribeError | None) -> None:
        ready, ch.ready = ch.ready, None
        if ready is not None:
            ready(err)

    @staticmethod
    def _report_failure(ch: ChannelSubs, err: errors.SubscribeError) -> None:
        if err.transient:
            log.info("postgres_changes: subscription of %s deferred (retried in %.0f s): %s",
                     ch.topic, RETRY_SECONDS, err.message)
        else:
            log.warning("postgres_changes: subscription of %s failed: %s", ch.topic, err.message)

    async def _resolve(self, ch: ChannelSubs) -> list[tuple[TableKey, Sub]]:
        bindings = [parse_binding(raw) for raw in ch.bindings]
        conds = {b.id: parse_conditions(b) for b in bindings}
        role = ch.claims.get("role")
        if not isinstance(role, str):
            raise errors.NoRoleClaim()
        why_not = await self._ready()
        if why_not is not None:
            # the reason (host, port, driver text) goes to the log, never on the wire
            log.info("postgres_changes: subscription deferred: %s", why_not)
            raise errors.ChangesUnavailable()
        try:
            return await self._conn.run(lambda conn: self._resolve_in_db(conn, ch, bindings, conds, role))
        except (psycopg.OperationalError, OSError) as exc:
            log.warning("postgres_changes: subscription deferred: %s", exc)
            raise errors.ChangesUnavailable() from exc

    async def _resolve_in_db(self, conn: psycopg.AsyncConnection[Any], ch: ChannelSubs, bindings: list[Binding],
                             conds: Mapping[int, tuple[Condition, ...]], role: str) -> list[tuple[TableKey, Sub]]:
        published = await self._cache.publication_tables(conn, self._publication)
        cohort = cohort_key(ch.claims)
        out: list[tuple[TableKey, Sub]] = []
        for b in bindings:
            tables = catalog.match_tables(published, b.schema, b.table)
            if not tables:
                raise errors.TableNotPublished(b.describe())
            if not await self._cache.role_exists(conn, role):
                raise errors.SubscriptionRejected(
                    b.describe(), f'ERROR 22023 (invalid_parameter_value) role "{role}" does not exist')
            for schema, table in tables:
                info = await self._cache.table_info(conn, schema, table)
                if info is None:
                    continue
                allowed = await self._cache.selectable_columns(conn, role, info.relid)
                typed = typed_conditions(b, conds[b.id], info, allowed)
                out.append(((schema, table), Sub(ch.peer, ch.topic, (schema, table), b, typed, role, ch.claims,
                                                 cohort, ch.offsets)))
        return out


def typed_conditions(b: Binding, parsed: tuple[Condition, ...], info: catalog.TableInfo,
                     allowed: frozenset[str]) -> tuple[TypedCondition, ...]:
    """§6.2, §6.8: ``select`` and filter columns must be selectable; values must cast."""
    columns = {c.name: c.type_name for c in info.columns if c.name in allowed}
    for name in b.select or ():
        if name not in columns:
            raise errors.SubscriptionRejected(b.describe(), f"invalid column for select {name}")
    try:
        return validate(parsed, columns)
    except errors.FilterError as err:
        raise errors.SubscriptionRejected(b.describe(), err.message) from err
