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

import orjson
from orjson import Fragment

from .. import errors
from .codec import BinaryBroadcastPush, Broadcast, Message
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
    AwaitReplication as AwaitReplication,
    Close as Close,
    Effect as Effect,
    GateCheck as GateCheck,
    GateJoin as GateJoin,
    GateSend as GateSend,
    GateVerdict as GateVerdict,
    Publish as Publish,
    PushPresenceState as PushPresenceState,
    ReplayedMessage as ReplayedMessage,
    Send as Send,
    SendBinary as SendBinary,
    Subscribe as Subscribe,
    SubscribePostgres as SubscribePostgres,
    Track as Track,
    Unsubscribe as Unsubscribe,
    UnsubscribePostgres as UnsubscribePostgres,
    Untrack as Untrack,
)
from .join import JoinParams, echo_bindings, parse_join
from .keys import TOPIC_PREFIX as TOPIC_PREFIX  # re-exported: the names callers know
from .keys import StreamKey, presence_stream_key
from .keys import stream_key as stream_key
from .limits import FixedWindow, TenantLimits

Verifier = Callable[[str, float], dict[str, Any]]


# --- configuration and per-channel state ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionConfig:
    max_channels: int = 100
    max_payload_bytes: int = 3_000_500
    presence_window_limit: int = 5
    presence_window_s: float = 30.0
    token_recheck_s: float = 300.0
    join_error_delay_s: float = 5.0
    presence_forced: bool = False
    #: Private channels are authorized by RLS policies in the database (§7.3); without one
    #: nobody can be granted read, so private joins are refused.
    private_allowed: bool = False
    #: Tenant ``private_only``: public joins are refused (§3.5 ``PrivateOnly``).
    private_only: bool = False
    #: §4.8: replay ``limit`` default and ceiling.
    replay_max: int = 25


@dataclass(slots=True)
class Channel:
    topic: str
    sub_topic: str
    join_ref: str | None
    params: JoinParams
    stream: StreamKey
    token: str
    claims: dict[str, Any]
    deadline: float
    presence_key: str
    presence_window: FixedWindow
    bindings: tuple[dict[str, Any], ...] = ()
    tracked: bool = False
    private: bool = False
    presence_stream: StreamKey = StreamKey("")
    replay: tuple[int, int] | None = None
    #: private rights: None = not evaluated yet (§7.3 caches them until the next refresh)
    rights: dict[str, bool | None] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    #: pushes waiting for an authorization answer, in arrival order
    queue: list[tuple[Message | BinaryBroadcastPush, int]] = field(default_factory=list)
    #: the channel this join replaced (§2.5), closed right after this join's reply
    replaces: Channel | None = None
    #: the ``ref`` of the phx_join this channel answers
    join_msg_ref: str | None = None

    def join_reply(self, payload: dict[str, Any]) -> Message:
        return Message(self.topic, "phx_reply", payload, ref=self.join_msg_ref, join_ref=self.join_ref)

    def can(self, right: str) -> bool | None:
        return True if not self.private else self.rights.get(right)


def ok_payload(response: Any = None) -> dict[str, Any]:
    return {"status": "ok", "response": {} if response is None else response}


def error_payload(response: Any) -> dict[str, Any]:
    return {"status": "error", "response": response}


def reply(msg: Message | BinaryBroadcastPush, payload: dict[str, Any], join_ref: str | None) -> Message:
    return Message(msg.topic, "phx_reply", payload, ref=msg.ref, join_ref=join_ref)


def unmatched(msg: Message | BinaryBroadcastPush) -> Message:
    """§2.4: pushes to topics this socket has not joined."""
    return reply(msg, error_payload(errors.UnmatchedTopic().response), None)


def system_message(ch: Channel, status: str, message: str, extension: str = "system") -> Message:
    payload = {"extension": extension, "status": status, "message": message, "channel": ch.sub_topic}
    return Message(ch.topic, "system", payload, ref=None, join_ref=ch.join_ref)


def phx_close(ch: Channel) -> Message:
    """§3.7: ``ref`` and ``join_ref`` both carry the closed join's ref."""
    return Message(ch.topic, "phx_close", {}, ref=ch.join_ref, join_ref=ch.join_ref)


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
            return self._publish(ch, msg, _broadcast_of(ch, msg), now, size)
        if msg.event == "broadcast":
            if not isinstance(msg.payload, dict):
                return []  # §4.1: the payload is an object; anything else cannot be relayed
            return self._publish(ch, msg, _broadcast_of(ch, msg), now, size)
        if msg.event == "presence":
            return self._presence(ch, msg, now, size)
        if msg.event == "access_token" and isinstance(msg.payload, dict) and "access_token" in msg.payload:
            return self._access_token(ch, msg.payload["access_token"], now)
        if self.limits is not None:
            self.limits.events.add(now)  # §2.4: unknown events count toward the rate
        return []  # §2.4: unknown events on a joined channel are ignored without a reply

    def tick(self, now: float) -> list[Effect]:
        """Re-verify channel tokens whose deadline has passed (§3.9 "Expiry")."""
        effects: list[Effect] = []
        for ch in [c for c in self.channels.values() if c.deadline <= now]:
            try:
                self.verify(ch.token, now)
            except errors.RealtimeError as err:
                effects += self._shutdown(ch, err)
            else:
                ch.deadline = self._deadline(ch.claims, now)
        return effects

    def next_deadline(self) -> float | None:
        return min((c.deadline for c in self.channels.values()), default=None)

    def closed(self) -> list[Effect]:
        """The socket is gone: release every channel's subscriptions and presence (§5.1)."""
        effects: list[Effect] = []
        for ch in list(self.channels.values()):
            effects += self._teardown(ch)
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
        old = self.channels.pop(msg.topic, None)
        if old is not None:  # §2.5 duplicate join: stop the old channel first
            effects += self._teardown(old)
        self.joining.pop(msg.topic, None)  # a join still being authorized is superseded
        try:
            ch = self._open_channel(msg, now)
        except errors.RealtimeError as err:
            return effects + self._join_error(msg, err, old)
        ch.replaces = old
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

    def _join_error(self, msg: Message, err: errors.RealtimeError, old: Channel | None) -> list[Effect]:
        effects: list[Effect] = []
        if old is not None:
            effects.append(Send(phx_close(old)))
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
        """Reply ok and start the channel's streams; pushes queued meanwhile run after (§3.7)."""
        self.channels[ch.topic] = ch
        if not self.counted and self.limits is not None:
            self.limits.add_user()
            self.counted = True
        effects: list[Effect] = [Send(ch.join_reply(ok_payload({"postgres_changes": list(ch.bindings)})))]
        effects += self._subscriptions(ch, frozenset(m.id for m in replayed))
        if ch.replaces is not None:
            effects.append(Send(phx_close(ch.replaces)))  # right after the new join's reply (§2.5)
            ch.replaces = None
        effects += _replay(ch, replayed)
        if self._presence_enabled(ch) and ch.can(PRESENCE_READ):
            if self.limits is not None:
                self.limits.presence.add(now)
            effects.append(PushPresenceState(ch.presence_stream, ch.topic, ch.join_ref))
        if ch.bindings:
            effects.append(SubscribePostgres(ch.topic, ch.join_ref, ch.bindings, ch.claims))
        if ch.params.replication_ready:
            effects.append(AwaitReplication(ch.topic, ch.join_ref))
        return effects + self._drain(ch, now)

    def _subscriptions(self, ch: Channel, skip_ids: frozenset[str] = frozenset()) -> list[Effect]:
        if not ch.private:
            return [Subscribe(ch.stream, ch.topic, skip_ids) if skip_ids else Subscribe(ch.stream, ch.topic)]
        effects: list[Effect] = []
        if ch.can(BROADCAST_READ):
            effects.append(Subscribe(ch.stream, ch.topic, skip_ids) if skip_ids else Subscribe(ch.stream, ch.topic))
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
            return [Send(reply(msg, ok_payload(), joining.join_ref)), Send(phx_close(joining))]
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

    # function gates --------------------------------------------------------------------------

    def gated(self, topic: str, join_ref: str | None, purpose: str, verdict: GateVerdict,
              now: float) -> list[Effect]:
        """The adapter's answer to ``GateJoin`` / ``GateSend``; a denial is answered at once
        (no join-error back-off) with the gate's reason."""
        if purpose == GATE_JOIN:
            ch = self.joining.get(topic)
            if ch is None or ch.join_ref != join_ref or GATE not in ch.pending:
                return []  # left or superseded meanwhile
            ch.pending.discard(GATE)
            del self.joining[topic]
            if verdict.allow:
                return self._admit(ch, now)
            effects: list[Effect] = [Send(phx_close(ch.replaces))] if ch.replaces is not None else []
            reason = verdict.reason or errors.JoinDenied().message
            effects.append(Send(reply(_join_message(ch), error_payload({"reason": reason}), ch.join_ref)))
            return effects + [Send(unmatched(m)) for m, _ in ch.queue]
        ch = self.channels.get(topic)
        if ch is None or ch.join_ref != join_ref or GATE not in ch.pending or not ch.queue:
            return []
        ch.pending.discard(GATE)
        msg, size = ch.queue.pop(0)
        if not verdict.allow:
            reason = verdict.reason or errors.SendDenied().message
            effects = [Send(reply(msg, error_payload({"reason": reason}), ch.join_ref))]
        else:
            if verdict.payload is not None:
                msg = _rewritten(msg, verdict.payload)
            effects = self._publish(ch, msg, _broadcast_of(ch, msg), now, size, gated=True)
        return effects + self._drain(ch, now)

    # authorization answers (§7.3) --------------------------------------------------------------

    def authorized(self, topic: str, join_ref: str | None, purpose: str, result: AuthResult,
                   now: float) -> list[Effect]:
        """The adapter's answer to an ``Authorize`` effect."""
        if purpose == "join":
            ch = self.joining.get(topic)
            if ch is None or ch.join_ref != join_ref:
                return []  # left or superseded meanwhile
            del self.joining[topic]
            return self._join_authorized(ch, result, now)
        ch = self.channels.get(topic)
        if ch is None or ch.join_ref != join_ref:
            return []
        if purpose == "refresh":
            return self._refresh_authorized(ch, result)
        return self._write_authorized(ch, result, now)

    def _join_authorized(self, ch: Channel, result: AuthResult, now: float) -> list[Effect]:
        ch.pending.clear()
        read_b = result.error is None and result.granted.get(BROADCAST_READ, False)
        read_p = result.error is None and result.granted.get(PRESENCE_READ, False)
        # §3.3 step 6: join refused unless broadcast-read or presence-read; replay needs
        # broadcast-read (§4.8); policy errors count as denial (§7.3)
        if not (read_b or read_p) or (ch.replay is not None and not read_b):
            err = errors.Unauthorized(ch.sub_topic)
            queued, ch.queue = ch.queue, []
            effects = self._join_error(_join_message(ch), err, ch.replaces)
            for msg, _ in queued:  # the client's pushes for a topic that never joined
                effects.append(Send(unmatched(msg)))
            return effects
        ch.rights[BROADCAST_READ] = read_b
        if PRESENCE_READ in result.granted:
            ch.rights[PRESENCE_READ] = read_p
        return self._activate(ch, result.replayed, now)

    def _refresh_authorized(self, ch: Channel, result: AuthResult) -> list[Effect]:
        """§3.9: read rights are re-evaluated; losing all, or losing one held, ends the channel."""
        ch.pending.difference_update(result.granted)
        if result.error is not None:
            return self._shutdown(ch, errors.UnableToConnectToProject())
        read_b = result.granted.get(BROADCAST_READ, False)
        read_p = result.granted.get(PRESENCE_READ, ch.rights.get(PRESENCE_READ) or False)
        if not (read_b or read_p):
            return self._shutdown(ch, errors.Unauthorized(ch.sub_topic))
        if (ch.rights.get(BROADCAST_READ) and not read_b) or (ch.rights.get(PRESENCE_READ) and not read_p):
            return self._shutdown(ch, errors.PermissionLost(ch.sub_topic))
        ch.rights[BROADCAST_READ] = read_b
        if PRESENCE_READ in result.granted:
            ch.rights[PRESENCE_READ] = read_p
        return []

    def _write_authorized(self, ch: Channel, result: AuthResult, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for check in ch.pending & set(result.granted) | (ch.pending if result.error else set()):
            granted = result.error is None and result.granted.get(check, False)
            if check == PRESENCE_READ and granted and not ch.rights.get(PRESENCE_READ):
                effects.append(Subscribe(ch.presence_stream, ch.topic))
            ch.rights[check] = granted
        ch.pending.clear()
        return effects + self._drain(ch, now)

    def _need(self, ch: Channel, msg: Message | BinaryBroadcastPush, size: int, checks: tuple[str, ...]) -> list[Effect]:
        """Park ``msg`` until the lazily evaluated ``checks`` are answered (§4.4, §5.5)."""
        ch.queue.insert(0, (msg, size))
        if ch.pending:
            return []
        ch.pending.update(checks)
        return [Authorize(ch.topic, ch.join_ref, "write", ch.sub_topic, ch.claims, checks)]

    # broadcast -------------------------------------------------------------------------------

    def _publish(self, ch: Channel, msg: Message | BinaryBroadcastPush, b: Broadcast, now: float,
                 size: int, gated: bool = False) -> list[Effect]:
        if ch.private:
            allowed = ch.can(BROADCAST_WRITE)
            if allowed is None:
                return self._need(ch, msg, size, (BROADCAST_WRITE,))
            if not allowed:
                return []  # §4.2: unauthorized sends are dropped silently, even with ack
        if not gated and self.gates is not None:
            event, data = _gate_subject(msg)
            if event is not None and self.gates("authorize_send", ch.sub_topic, event):
                ch.queue.insert(0, (msg, size))  # later pushes wait behind the gates' answer
                ch.pending.add(GATE)
                return [GateSend(ch.topic, ch.join_ref, ch.sub_topic, event, data, ch.claims)]
        ack = ch.params.broadcast_ack
        if size > self.config.max_payload_bytes:  # §4.5
            return [Send(reply(msg, error_payload(errors.PayloadSizeExceeded().response), ch.join_ref))] if ack else []
        if self.limits is not None:
            if self.limits.events_exceeded(now):  # §8 events per second
                return self._shutdown(ch, errors.MessageRateLimitReached())
            self.limits.events.add(now)
        exclude = None if ch.params.broadcast_self else ch.topic
        effects: list[Effect] = [Publish(ch.stream, b, exclude)]
        if ack:
            effects.append(Send(reply(msg, ok_payload(), ch.join_ref)))
        return effects

    # presence --------------------------------------------------------------------------------

    def _presence(self, ch: Channel, msg: Message, now: float, size: int) -> list[Effect]:
        body = msg.payload
        if not isinstance(body, dict):
            return [Send(reply(msg, error_payload({}), ch.join_ref))]
        if "event" not in body:
            return [Send(reply(msg, ok_payload(), ch.join_ref))]  # §5.1: no-op
        event = body["event"].lower() if isinstance(body["event"], str) else None
        if event not in ("track", "untrack"):
            return [Send(reply(msg, error_payload({}), ch.join_ref))]
        if event == "track" and ch.private:
            missing = tuple(c for c in (PRESENCE_WRITE, PRESENCE_READ) if ch.rights.get(c) is None)
            if missing:  # §5.5: write on the first track; read too if presence was off at join
                return self._need(ch, msg, size, missing)
            if not ch.rights.get(PRESENCE_WRITE):
                return [Send(reply(msg, error_payload({}), ch.join_ref))]  # item 84
        if not ch.presence_window.hit(now):  # §5.7 per-channel window
            return self._shutdown(ch, errors.ClientPresenceRateLimitReached())
        if event == "untrack":
            # §5.1: the diff a presence push causes reaches the channel before its reply
            effects: list[Effect] = []
            if ch.tracked:
                ch.tracked = False
                effects.append(Untrack(ch.presence_stream, ch.topic))
            effects.append(Send(reply(msg, ok_payload(), ch.join_ref)))
            return effects
        payload = body.get("payload", {})
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            return [Send(reply(msg, error_payload(errors.PresencePayloadNotMap().response), ch.join_ref))]
        if size > self.config.max_payload_bytes:
            return self._shutdown(ch, errors.TrackMessageSizeExceeded())
        if self.limits is not None:
            if self.limits.presence_exceeded(now):  # §5.7 tenant presence rate
                return self._shutdown(ch, errors.PresenceRateLimitReached())
            self.limits.presence.add(now)
        ch.tracked = True
        return [
            Track(ch.presence_stream, ch.topic, ch.presence_key, payload),
            Send(reply(msg, ok_payload(), ch.join_ref)),
        ]

    # token refresh ---------------------------------------------------------------------------

    def _access_token(self, ch: Channel, token: Any, now: float) -> list[Effect]:
        """§3.9: never replied to; a bad token shuts the channel down."""
        if token is None or token == ch.token or (isinstance(token, str) and token.startswith("sb_")):
            return []
        if not isinstance(token, str):
            return self._shutdown(ch, errors.MalformedJWT())
        try:
            claims = self.verify(token, now)
        except errors.RealtimeError as err:
            return self._shutdown(ch, err)
        ch.token, ch.claims = token, claims
        ch.deadline = self._deadline(claims, now)
        effects: list[Effect] = []
        if ch.private:
            # §7.3: cached rights last until the next refresh; reads are re-checked now
            checks = (BROADCAST_READ, PRESENCE_READ) if ch.rights.get(PRESENCE_READ) is not None else (BROADCAST_READ,)
            ch.rights = {k: v for k, v in ch.rights.items() if k in (BROADCAST_READ, PRESENCE_READ)}
            effects.append(Authorize(ch.topic, ch.join_ref, "refresh", ch.sub_topic, claims, checks))
        if ch.bindings:
            effects.append(SubscribePostgres(ch.topic, ch.join_ref, ch.bindings, claims))
        return effects


def _replay(ch: Channel, replayed: tuple[ReplayedMessage, ...]) -> list[Effect]:
    """§4.8: JSON rows as text pushes carrying the join_ref, binary rows as kind-4 frames; each
    with ``meta: {"replayed": true, "id": …}``."""
    effects: list[Effect] = []
    for m in replayed:
        meta = {"replayed": True, "id": m.id}
        if m.binary is not None:
            effects.append(SendBinary(ch.topic, m.event, meta, m.binary))
            continue
        payload = {"type": "broadcast", "event": m.event, "payload": Fragment(m.payload_json or b"{}"), "meta": meta}
        effects.append(Send(Message(ch.topic, "broadcast", payload, ref=None, join_ref=ch.join_ref)))
    return effects


def _broadcast_of(ch: Channel, msg: Message | BinaryBroadcastPush) -> Broadcast:
    if isinstance(msg, BinaryBroadcastPush):
        # §4.3: kind-3 metadata (only ``persist``) is not forwarded; receivers get none.
        return Broadcast(ch.topic, event=msg.event, data=msg.data, binary=msg.binary)
    return Broadcast(ch.topic, payload=msg.payload)


def _gate_subject(msg: Message | BinaryBroadcastPush) -> tuple[str | None, Any]:
    """(user event, payload) of a client broadcast, as a send gate sees it."""
    if isinstance(msg, BinaryBroadcastPush):
        return msg.event, (msg.data if msg.binary else orjson.loads(msg.data))
    event = msg.payload.get("event") if isinstance(msg.payload, dict) else None
    return (event if isinstance(event, str) else None), msg.payload.get("payload")


def _rewritten(msg: Message | BinaryBroadcastPush, payload: Any) -> Message | BinaryBroadcastPush:
    """A broadcast whose user payload a send gate replaced (a binary one becomes JSON)."""
    if isinstance(msg, BinaryBroadcastPush):
        return BinaryBroadcastPush(msg.join_ref, msg.ref, msg.topic, msg.event, None, orjson.dumps(payload), False)
    return Message(msg.topic, msg.event, {**msg.payload, "payload": payload}, ref=msg.ref, join_ref=msg.join_ref)


def _join_message(ch: Channel) -> Message:
    """The phx_join a parked private channel answers."""
    return Message(ch.topic, "phx_join", {}, ref=ch.join_msg_ref, join_ref=ch.join_ref)
