"""Joins that wait for their postgres_changes subscriptions (protocol.md §3.11; sans-I/O).

With ``config.postgres_changes_options.wait`` and at least one binding, the join's ``ok`` reply
is held until every binding is live: the channel is parked in ``Session.joining`` (after its
read check, for a private channel), ``AwaitPostgres`` asks the adapter to create the
subscriptions, and ``postgres_ready`` (a method of ``Session``) answers.  Live: the usual
activation, the ``Subscribed to PostgreSQL`` message sent right after the reply.  Failed or
timed out: a join error, and the subscriptions are removed.  A waiting join that is left,
replaced or loses its socket drops its subscriptions too (``abandon``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors
from .channel import Channel, join_message, system_message, unmatched
from .effects import AwaitPostgres, Effect, ReplayedMessage, Send, UnsubscribePostgres
from .join import JoinParams, parse_flexible_bool

if TYPE_CHECKING:
    from .session import Session

#: ``Channel.pending`` while the join waits for its subscriptions
PG_WAIT = "postgres_wait"
DEFAULT_TIMEOUT_MS = 15_000
MAX_TIMEOUT_MS = 20_000
#: the ``system`` message that tells a channel its bindings are live (§6.3)
SUBSCRIBED = "Subscribed to PostgreSQL"


def wait_timeout_ms(params: JoinParams) -> int | None:
    """The join's wait in ms, ``None`` without ``wait``.  ``timeout``: a positive number of ms,
    at most 20000; anything else (absent, not a number, not positive) means 15000."""
    options = params.postgres_changes_options
    if not params.postgres_changes or not parse_flexible_bool(options.get("wait")):
        return None
    raw: Any = options.get("timeout")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        return DEFAULT_TIMEOUT_MS
    return max(1, min(MAX_TIMEOUT_MS, int(raw)))


def hold(self: Session, ch: Channel, replayed: tuple[ReplayedMessage, ...], timeout_ms: int) -> list[Effect]:
    """Park a join that passed its checks until its subscriptions are live."""
    ch.pending.add(PG_WAIT)
    ch.held = replayed
    self.joining[ch.topic] = ch
    return [AwaitPostgres(ch.topic, ch.join_ref, ch.bindings, ch.claims, timeout_ms, ch.pg_offsets, ch.pg_resume)]


def subscribed(ch: Channel) -> Effect:
    return Send(system_message(ch, "ok", SUBSCRIBED, extension="postgres_changes"))


def abandon(ch: Channel) -> list[Effect]:
    """A parked join given up (left, replaced, socket gone): drop what its wait created."""
    return [UnsubscribePostgres(ch.topic)] if PG_WAIT in ch.pending else []


def postgres_ready(self: Session, topic: str, join_ref: str | None, error: errors.RealtimeError | None,
                   now: float) -> list[Effect]:
    """The adapter's answer to ``AwaitPostgres``; ignored when the join was left or replaced."""
    ch = self.joining.get(topic)
    if ch is None or ch.join_ref != join_ref or PG_WAIT not in ch.pending:
        return []
    del self.joining[topic]
    ch.pending.discard(PG_WAIT)
    replayed, ch.held = ch.held, ()
    if error is not None:
        queued, ch.queue = ch.queue, []
        effects: list[Effect] = [UnsubscribePostgres(topic)]
        effects += self._join_error(join_message(ch), error, ch.replaces)
        return effects + [Send(unmatched(m)) for m, _ in queued]  # pushes of a join that failed
    ch.pg_live = True
    return self._activate(ch, replayed, now)
