"""Per-socket session state machine (sans-I/O).

Theory of operation
-------------------
One ``Session`` per WebSocket.  The adapter decodes a frame and calls
``receive(message, now, size)``; the session updates its table of joined channels and returns a
list of *effects* (send this frame, subscribe to that stream, track this presence...).  The
adapter executes the effects in order, synchronously, so every push that belongs to a join is
written after that join's reply (protocol.md §3.7 "post-join ordering").

Time is an argument: channel tokens expire, and ``next_deadline()`` tells the adapter when to
call ``tick(now)`` next (protocol.md §3.9).  Nothing here touches sockets, clocks or asyncio.

A channel is keyed by its full topic (``realtime:room1``): Phoenix allows one channel per topic
per socket, and a second join replaces the first (§2.5).  Messages for a joined topic are routed
to it whatever their ``join_ref`` (§2.4 "join_ref leniency").

Private channels (§7.3) need the database to evaluate RLS policies, which is I/O: the session
emits ``Authorize`` and parks the channel; the adapter answers with ``authorized(...)``.  A
private join waits in ``joining`` for its read check; pushes that arrive meanwhile, and pushes
that wait for a lazy write check (first broadcast, first track), queue on the channel and are
processed in order once the answer comes.  A private topic has two streams: broadcasts go to
members with broadcast-read, presence diffs to members with presence-read (§4.4, §5.2).

Function gates work the same way: a gated join or broadcast is parked, ``GateJoin`` /
``GateSend`` ask for the verdict and ``gated(...)`` answers.  The effect types are effects.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from .codec import BinaryBroadcastPush, Message
from .effects import (  # re-exported: the effects are part of the session's interface
    BROADCAST_READ as BROADCAST_READ,
    BROADCAST_WRITE as BROADCAST_WRITE,
    GATE as GATE,
    GATE_JOIN as GATE_JOIN,
    GATE_SEND as GATE_SEND,
    PRESENCE_READ as PRESENCE_READ,
    PRESENCE_WRITE as PRESENCE_WRITE,
    AuthResult as AuthResult,
    Authorize as Authorize,
    AwaitPostgres as AwaitPostgres,
    AwaitReplication as AwaitReplication,
    Close as Close,
    Effect as Effect,
    GateCheck as GateCheck,
    GateJoin as GateJoin,
    GateSend as GateSend,
    GateVerdict as GateVerdict,
    PERSIST as PERSIST,
    Persist as Persist,
    PersistResult as PersistResult,
    Publish as Publish,
    PushPresenceState as PushPresenceState,
    ReplayedMessage as ReplayedMessage,
    ReleaseResume as ReleaseResume,
    ResumeAnswer as ResumeAnswer,
    ResumeBroadcasts as ResumeBroadcasts,
    Send as Send,
    SendBinary as SendBinary,
    Subscribe as Subscribe,
    SubscribePostgres as SubscribePostgres,
    Track as Track,
    Unsubscribe as Unsubscribe,
    UnsubscribePostgres as UnsubscribePostgres,
    Untrack as Untrack,
)
from .join import echo_bindings, parse_join
from .keys import TOPIC_PREFIX as TOPIC_PREFIX  # re-exported: the names callers know
from .keys import presence_stream_key
from .keys import stream_key as stream_key
from .limits import FixedWindow, TenantLimits

Verifier = Callable[[str, float], dict[str, Any]]
from .channel import (  # re-exported: part of the session's interface
    SessionConfig,
    Channel,
    ok_payload,
    error_payload,
    reply,
    unmatched,
    system_message,
    phx_close,
    replay_effects,
    resume_params,
    pg_resume_params,
    broadcast_of,
    gate_subject,
    rewritten,
    join_message,
)
from . import authorizing, pgwait, pushes

__all__ = ["Session", "Verifier", "SessionConfig", "Channel", "ok_payload", "error_payload", "reply", "unmatched", "system_message", "phx_close", "replay_effects", "broadcast_of", "gate_subject", "rewritten", "join_message"]


# --- the session ----------------------------------------------------------------------------


@dataclass
class Session:
    verify: Verifier
    conn_token: str
    new_presence_key: Callable[[], str]
    config: SessionConfig = field(default_factory=SessionConfig)
    limits: TenantLimits | None = None
    #: function gates (README "Functions"), when any are configured
    gates: GateCheck | None = None
    channels: dict[str, Channel] = field(default_factory=dict)
    #: private joins waiting for their read check (§3.3 step 6)
    joining: dict[str, Channel] = field(default_factory=dict)
    #: this socket counts toward the tenant's concurrent users (§8)
    counted: bool = False

    # inbound ---------------------------------------------------------------------------------

    def receive(self, msg: Message | BinaryBroadcastPush, now: float, size: int = 0) -> list[Effect]:
        """Handle one decoded frame; ``size`` is its length on the wire (payload-size limit §4.5)."""
        if isinstance(msg, Message):
            if msg.topic == "phoenix" and msg.event == "heartbeat":
                return [Send(reply(msg, ok_payload(), None))]  # §2.1
            if msg.event == "phx_join":
                return self._join(msg, now)
            if msg.event == "phx_leave":
                return self._leave(msg)
        pending = self.joining.get(msg.topic)
        if pending is not None:  # processed once the join is answered (§9.2)
            pending.queue.append((msg, size))
            return []
        ch = self.channels.get(msg.topic)
        if ch is None:
            return [Send(unmatched(msg))]
        if ch.queue:  # keep order behind pushes waiting for a write check
            ch.queue.append((msg, size))
            return []
        return self._dispatch(ch, msg, now, size)

    def _dispatch(self, ch: Channel, msg: Message | BinaryBroadcastPush, now: float, size: int) -> list[Effect]:
        if isinstance(msg, BinaryBroadcastPush):
            return self._publish(ch, msg, broadcast_of(ch, msg), now, size)
        if msg.event == "broadcast":
            if not isinstance(msg.payload, dict):
                return []  # §4.1: the payload is an object; anything else cannot be relayed
            return self._publish(ch, msg, broadcast_of(ch, msg), now, size)
        if msg.event == "presence":
            return self._presence(ch, msg, now, size)
        if msg.event == "access_token" and isinstance(msg.payload, dict) and "access_token" in msg.payload:
            return self._access_token(ch, msg.payload["access_token"], now)
        if self.limits is not None:
            self.limits.events.add(now)  # §2.4: unknown events count toward the rate
        return []  # §2.4: unknown events on a joined channel are ignored without a reply

    def tick(self, now: float) -> list[Effect]:
        """Re-verify channel tokens whose deadline has passed (§3.9 "Expiry"); apply deferred
        presence pushes whose window opened (§5.7 ``coalesce``)."""
        effects: list[Effect] = []
        for ch in [c for c in self.channels.values() if c.presence_due is not None and c.presence_due <= now]:
            effects += pushes.apply_deferred_presence(self, ch, now)
        for ch in [c for c in self.channels.values() if c.deadline <= now]:
            try:
                self.verify(ch.token, now)
            except errors.RealtimeError as err:
                effects += self._shutdown(ch, err)
            else:
                ch.deadline = self._deadline(ch.claims, now)
        return effects

    def next_deadline(self) -> float | None:
        # one pass, no lists: the adapter asks after every frame it reads
        best: float | None = None
        for c in self.channels.values():
            d = c.deadline
            if c.presence_due is not None and c.presence_due < d:
                d = c.presence_due
            if best is None or d < best:
                best = d
        return best

    def closed(self) -> list[Effect]:
        """The socket is gone: release every channel's subscriptions and presence (§5.1)."""
        effects: list[Effect] = []
        for ch in list(self.channels.values()):
            effects += self._teardown(ch)
        for ch in self.joining.values():
            effects += pgwait.abandon(ch)
        self.channels.clear()
        self.joining.clear()
        if self.counted and self.limits is not None:
            self.limits.remove_user()
            self.counted = False
        return effects

    # join / leave ----------------------------------------------------------------------------

    def _join(self, msg: Message, now: float) -> list[Effect]:
        if not msg.topic.startswith(TOPIC_PREFIX):
            return [Send(unmatched(msg))]  # §2.4
        effects: list[Effect] = []
        replaced: tuple[Channel, ...] = ()
        queued: list[tuple[Message | BinaryBroadcastPush, int]] = []
        old = self.channels.pop(msg.topic, None)
        if old is not None:  # §2.5 duplicate join: stop the old channel first
            effects += self._teardown(old)
            replaced = (old,)
        superseded = self.joining.pop(msg.topic, None)
        if superseded is not None:
            # a join still waiting for its checks is replaced like an open channel (§2.5); the
            # pushes queued behind it wait for the new join instead
            replaced = (*superseded.replaces, superseded)
            queued, superseded.queue = superseded.queue, []
            effects += pgwait.abandon(superseded)
        try:
            ch = self._open_channel(msg, now)
        except errors.RealtimeError as err:
            return effects + self._join_error(msg, err, replaced) + [Send(unmatched(m)) for m, _ in queued]
        ch.replaces, ch.queue = replaced, queued
        if self.gates is not None and self.gates("authorize_join", ch.sub_topic, None):
            self.joining[msg.topic] = ch  # pushes for the topic wait behind the gates' answer
            ch.pending.add(GATE)
            config = msg.payload.get("config") if isinstance(msg.payload, dict) else None
            effects.append(GateJoin(ch.topic, ch.join_ref, ch.sub_topic, ch.claims,
                                    config if isinstance(config, dict) else {}))
            return effects
        return effects + self._admit(ch, now)

    def _admit(self, ch: Channel, now: float) -> list[Effect]:
        """A join that passed its checks: private ones wait for their read check (§7.3)."""
        if ch.private:
            self.joining[ch.topic] = ch
            checks = (BROADCAST_READ, PRESENCE_READ) if self._presence_enabled(ch) else (BROADCAST_READ,)
            ch.pending.update(checks)
            return [Authorize(ch.topic, ch.join_ref, "join", ch.sub_topic, ch.claims, checks, ch.replay)]
        return self._activate(ch, (), now)

    def _join_error(self, msg: Message, err: errors.RealtimeError, replaced: tuple[Channel, ...]) -> list[Effect]:
        effects: list[Effect] = [Send(phx_close(old)) for old in replaced]
        # §3.3: every join error is delayed to slow retry storms
        delay = self.config.join_error_delay_s
        effects.append(Send(reply(msg, error_payload(err.response), msg.join_ref), delay))
        if err.close_code is not None and err.close_reason is not None:
            effects.append(Close(err.close_code, err.close_reason, delay))  # §3.5 join rate
        return effects

    def _open_channel(self, msg: Message, now: float) -> Channel:
        """Checks in the reference order of §3.3; raises the first failure."""
        sub_topic = msg.topic[len(TOPIC_PREFIX) :]
        if not sub_topic:
            raise errors.TopicNameRequired()
        params = parse_join(msg.payload)
        if self.config.private_only and not params.private:
            raise errors.PrivateOnly()
        limits = self.limits
        if limits is not None:
            if not self.counted and limits.users_full():
                raise errors.ConnectionRateLimitReached()
            if limits.joins_exceeded(now):
                raise errors.ClientJoinRateLimitReached()
            limits.joins.add(now)
        if len(self.channels) + len(self.joining) >= self.config.max_channels:
            raise errors.ChannelRateLimitReached()
        token = params.access_token if params.access_token is not None else self.conn_token
        claims = self.verify(token, now)
        if params.private and not self.config.private_allowed:
            raise errors.Unauthorized(sub_topic)
        replay = self._replay_params(params.replay, params.private)
        offsets, resume = resume_params(params.broadcast_resume, self.config.resume_enabled)
        pg_offsets, pg_resume = (pg_resume_params(params.postgres_changes_options.get("resume"),
                                                  self.config.resume_enabled)
                                 if params.postgres_changes else (False, None))
        return Channel(
            topic=msg.topic,
            sub_topic=sub_topic,
            join_ref=msg.join_ref,
            params=params,
            stream=stream_key(params.private, sub_topic),
            token=token,
            claims=claims,
            deadline=self._deadline(claims, now),
            presence_key=params.presence_key or self.new_presence_key(),
            presence_window=FixedWindow(self.config.presence_window_limit, self.config.presence_window_s),
            bindings=tuple(echo_bindings(params.postgres_changes)),
            private=params.private,
            presence_stream=presence_stream_key(params.private, sub_topic),
            replay=replay,
            join_msg_ref=msg.ref,
            offsets=offsets,
            resume=resume,
            pg_offsets=pg_offsets,
            pg_resume=pg_resume,
        )

    def _replay_params(self, raw: Any, private: bool) -> tuple[int, int] | None:
        """§4.8: ``since`` required integer ms, ``limit`` integer clamped to 1…25 (default 25)."""
        if raw is None:
            return None
        if not private:
            raise errors.ReplayNotAllowed()
        since = raw.get("since") if isinstance(raw, dict) else None
        limit = raw.get("limit", self.config.replay_max) if isinstance(raw, dict) else None
        if not isinstance(since, int) or isinstance(since, bool) or not isinstance(limit, int) or isinstance(limit, bool):
            raise errors.ReplayParamsInvalid()
        return since, max(1, min(self.config.replay_max, limit))

    def _presence_enabled(self, ch: Channel) -> bool:
        return ch.params.presence_enabled or self.config.presence_forced

    def _activate(self, ch: Channel, replayed: tuple[ReplayedMessage, ...], now: float) -> list[Effect]:
        """Reply ok and start the channel's streams; pushes queued meanwhile run after (§3.7).
        A join with ``postgres_changes_options.wait`` first waits for its bindings (§3.11)."""
        if ch.bindings and not ch.pg_live and (wait_ms := pgwait.wait_timeout_ms(ch.params)) is not None:
            return pgwait.hold(self, ch, replayed, wait_ms)
        self.channels[ch.topic] = ch
        if not self.counted and self.limits is not None:
            self.limits.add_user()
            self.counted = True
        effects: list[Effect] = [Send(ch.join_reply(ok_payload({"postgres_changes": list(ch.bindings)})))]
        effects += self._subscriptions(ch, frozenset(m.id for m in replayed))
        effects += [Send(phx_close(old)) for old in ch.replaces]  # right after the new join's reply (§2.5)
        ch.replaces = ()
        effects += replay_effects(ch, replayed)
        if ch.resume is not None and ch.can(BROADCAST_READ):  # §4.10, after §4.8's replay
            effects.append(ResumeBroadcasts(ch.stream, ch.topic, ch.join_ref, *ch.resume))
        if self._presence_enabled(ch) and ch.can(PRESENCE_READ):
            if self.limits is not None:
                self.limits.presence.add(now)
            effects.append(PushPresenceState(ch.presence_stream, ch.topic, ch.join_ref))
        if ch.bindings:
            effects.append(pgwait.subscribed(ch) if ch.pg_live
                           else SubscribePostgres(ch.topic, ch.join_ref, ch.bindings, ch.claims,
                                                  ch.pg_offsets, ch.pg_resume))
        if ch.params.replication_ready:
            effects.append(AwaitReplication(ch.topic, ch.join_ref))
        return effects + self._drain(ch, now)

    def _subscriptions(self, ch: Channel, skip_ids: frozenset[str] = frozenset()) -> list[Effect]:
        broadcasts = Subscribe(ch.stream, ch.topic, skip_ids, ch.offsets, ch.resume is not None)
        if not ch.private:
            return [broadcasts]
        effects: list[Effect] = []
        if ch.can(BROADCAST_READ):
            effects.append(broadcasts)
        if ch.can(PRESENCE_READ):
            effects.append(Subscribe(ch.presence_stream, ch.topic))
        return effects

    def _drain(self, ch: Channel, now: float) -> list[Effect]:
        """Process queued pushes until one needs an authorization answer again."""
        effects: list[Effect] = []
        while ch.queue and not ch.pending and self.channels.get(ch.topic) is ch:
            msg, size = ch.queue.pop(0)
            effects += self._dispatch(ch, msg, now, size)
        return effects

    def _leave(self, msg: Message) -> list[Effect]:
        joining = self.joining.get(msg.topic)
        if joining is not None and (msg.join_ref is None or msg.join_ref == joining.join_ref):
            del self.joining[msg.topic]  # the pending join is abandoned; its answer is ignored
            effects: list[Effect] = pgwait.abandon(joining)
            effects.append(Send(reply(msg, ok_payload(), joining.join_ref)))
            effects += [Send(phx_close(c)) for c in (*joining.replaces, joining)]
            return effects + [Send(unmatched(m)) for m, _ in joining.queue]  # pushes it never ran
        ch = self.channels.get(msg.topic)
        stale = ch is not None and msg.join_ref is not None and msg.join_ref != ch.join_ref
        if ch is None or stale:
            # §2.4: leaving a topic that is not joined is fine; a leave naming an older join of
            # the topic is ignored, as Phoenix does.
            return [Send(reply(msg, ok_payload(), msg.join_ref))]
        del self.channels[ch.topic]
        effects = self._teardown(ch)
        effects.append(Send(reply(msg, ok_payload(), ch.join_ref)))  # §3.6: reply, then close
        effects.append(Send(phx_close(ch)))
        return effects

    def _teardown(self, ch: Channel) -> list[Effect]:
        effects: list[Effect] = [Unsubscribe(ch.stream, ch.topic)]
        if ch.presence_stream != ch.stream:
            effects.append(Unsubscribe(ch.presence_stream, ch.topic))
        if ch.tracked:
            effects.append(Untrack(ch.presence_stream, ch.topic))
        if ch.bindings:
            effects.append(UnsubscribePostgres(ch.topic))
        return effects

    def _shutdown(self, ch: Channel, err: errors.RealtimeError) -> list[Effect]:
        """§8 "shut down": system error, then phx_close; the socket stays open."""
        self.channels.pop(ch.topic, None)
        ch.queue.clear()
        effects = self._teardown(ch)
        effects.append(Send(system_message(ch, "error", err.message)))
        effects.append(Send(phx_close(ch)))
        return effects

    def _deadline(self, claims: Mapping[str, Any], now: float) -> float:
        exp = claims.get("exp")
        recheck = now + self.config.token_recheck_s
        return min(float(exp), recheck) if isinstance(exp, int | float) else recheck

    def shutdown(self, topic: str, error: errors.RealtimeError | str, join_ref: str | None) -> list[Effect]:
        """Shut a joined channel down from outside (e.g. ``errors.ReplicationNotReady``, §3.7).

        A bare string is still accepted from adapters that predate the error tree; new callers
        pass an ``errors`` instance."""
        ch = self.channels.get(topic)
        if ch is None or ch.join_ref != join_ref:
            return []
        return self._shutdown(ch, error if isinstance(error, errors.RealtimeError) else errors.RealtimeError(error))

    def replication(self, topic: str, join_ref: str | None, ready: bool) -> list[Effect]:
        """The adapter's answer to ``AwaitReplication`` (§3.7)."""
        ch = self.channels.get(topic)
        if ch is None or ch.join_ref != join_ref:
            return []
        if not ready:
            return self._shutdown(ch, errors.ReplicationNotReady())
        return [Send(system_message(ch, "ok", errors.Notice.REPLICATION_READY))]

    # answers to the adapter and pushes on a joined channel (authorizing.py, pushes.py)
    gated = authorizing.gated
    authorized = authorizing.authorized
    _join_authorized = authorizing.join_authorized
    _refresh_authorized = authorizing.refresh_authorized
    _write_authorized = authorizing.write_authorized
    _need = authorizing.need
    postgres_ready = pgwait.postgres_ready
    persisted = authorizing.persisted
    resumed = authorizing.resumed
    _publish = pushes.publish
    _presence = pushes.presence
    _access_token = pushes.access_token
