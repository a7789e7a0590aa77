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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from .codec import BinaryBroadcastPush, Broadcast, Message
from .join import JoinParams, echo_bindings, parse_join
from .limits import FixedWindow

TOPIC_PREFIX = "realtime:"

Verifier = Callable[[str, float], dict[str, Any]]


# --- effects --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``message`` to this socket, after ``delay`` seconds (join-error back-off §3.3)."""

    message: Message
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Start delivering ``stream`` to this socket's channel ``topic``."""

    stream: str
    topic: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    stream: str
    topic: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Fan ``broadcast`` out to every subscriber of ``stream``; ``exclude`` is the sending
    channel's topic on this socket when ``self`` is off (§4.2)."""

    stream: str
    broadcast: Broadcast
    exclude: str | None


@dataclass(frozen=True, slots=True)
class Track:
    stream: str
    topic: str
    key: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Untrack:
    stream: str
    topic: str


@dataclass(frozen=True, slots=True)
class PushPresenceState:
    """Send the stream's current ``presence_state`` to this channel (§5.2)."""

    stream: str
    topic: str
    join_ref: str | None


@dataclass(frozen=True, slots=True)
class SubscribePostgres:
    """Create the channel's postgres_changes subscriptions with these claims (§6.3)."""

    topic: str
    join_ref: str | None
    bindings: tuple[dict[str, Any], ...]
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UnsubscribePostgres:
    topic: str


Effect = (
    Send
    | Subscribe
    | Unsubscribe
    | Publish
    | Track
    | Untrack
    | PushPresenceState
    | SubscribePostgres
    | UnsubscribePostgres
)


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


def stream_key(private: bool, sub_topic: str) -> str:
    """Public and private channels of one sub-topic are separate streams (§3.1, §4.4)."""
    return ("priv:" if private else "pub:") + sub_topic


@dataclass(slots=True)
class Channel:
    topic: str
    sub_topic: str
    join_ref: str | None
    params: JoinParams
    stream: str
    token: str
    claims: dict[str, Any]
    deadline: float
    presence_key: str
    presence_window: FixedWindow
    bindings: tuple[dict[str, Any], ...] = ()
    tracked: bool = False


def ok_payload(response: Any = None) -> dict[str, Any]:
    return {"status": "ok", "response": {} if response is None else response}


def error_payload(response: Any) -> dict[str, Any]:
    return {"status": "error", "response": response}


def reply(msg: Message | BinaryBroadcastPush, payload: dict[str, Any], join_ref: str | None) -> Message:
    return Message(msg.topic, "phx_reply", payload, ref=msg.ref, join_ref=join_ref)


def unmatched(msg: Message | BinaryBroadcastPush) -> Message:
    """§2.4: pushes to topics this socket has not joined."""
    return reply(msg, error_payload({"reason": "unmatched topic"}), None)


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
    channels: dict[str, Channel] = field(default_factory=dict)

    # inbound ---------------------------------------------------------------------------------

    def receive(self, msg: Message | BinaryBroadcastPush, now: float, size: int = 0) -> list[Effect]:
        """Handle one decoded frame; ``size`` is its length on the wire (payload-size limit §4.5)."""
        if isinstance(msg, BinaryBroadcastPush):
            return self._binary_broadcast(msg, size)
        if msg.topic == "phoenix" and msg.event == "heartbeat":
            return [Send(reply(msg, ok_payload(), None))]  # §2.1
        if msg.event == "phx_join":
            return self._join(msg, now)
        ch = self.channels.get(msg.topic)
        if msg.event == "phx_leave":
            return self._leave(msg, ch)
        if ch is None:
            return [Send(unmatched(msg))]
        if msg.event == "broadcast":
            return self._broadcast(ch, msg, size)
        if msg.event == "presence":
            return self._presence(ch, msg, now, size)
        if msg.event == "access_token" and isinstance(msg.payload, dict) and "access_token" in msg.payload:
            return self._access_token(ch, msg.payload["access_token"], now)
        return []  # §2.4: unknown events on a joined channel are ignored without a reply

    def tick(self, now: float) -> list[Effect]:
        """Re-verify channel tokens whose deadline has passed (§3.9 "Expiry")."""
        effects: list[Effect] = []
        for ch in [c for c in self.channels.values() if c.deadline <= now]:
            try:
                self.verify(ch.token, now)
            except errors.RealtimeError as err:
                effects += self._shutdown(ch, err.message)
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
        return effects

    # join / leave ----------------------------------------------------------------------------

    def _join(self, msg: Message, now: float) -> list[Effect]:
        if not msg.topic.startswith(TOPIC_PREFIX):
            return [Send(unmatched(msg))]  # §2.4
        effects: list[Effect] = []
        old = self.channels.pop(msg.topic, None)
        if old is not None:  # §2.5 duplicate join: stop the old channel first
            effects += self._teardown(old)
        try:
            ch = self._open_channel(msg, now)
        except errors.RealtimeError as err:
            if old is not None:
                effects.append(Send(phx_close(old)))
            # §3.3: every join error is delayed to slow retry storms
            reason = {"reason": err.reason}
            effects.append(Send(reply(msg, error_payload(reason), msg.join_ref), self.config.join_error_delay_s))
            return effects
        self.channels[msg.topic] = ch
        effects.append(Send(reply(msg, ok_payload({"postgres_changes": list(ch.bindings)}), msg.join_ref)))
        effects.append(Subscribe(ch.stream, ch.topic))
        if old is not None:
            effects.append(Send(phx_close(old)))  # written right after the new join's reply (§2.5)
        if ch.params.presence_enabled or self.config.presence_forced:
            effects.append(PushPresenceState(ch.stream, ch.topic, ch.join_ref))
        if ch.bindings:
            effects.append(SubscribePostgres(ch.topic, ch.join_ref, ch.bindings, ch.claims))
        return effects

    def _open_channel(self, msg: Message, now: float) -> Channel:
        """Checks in the reference order of §3.3; raises the first failure."""
        sub_topic = msg.topic[len(TOPIC_PREFIX) :]
        if not sub_topic:
            raise errors.TopicNameRequired()
        params = parse_join(msg.payload)
        if len(self.channels) >= self.config.max_channels:
            raise errors.ChannelRateLimitReached()
        token = params.access_token if params.access_token is not None else self.conn_token
        claims = self.verify(token, now)
        if params.private and not self.config.private_allowed:
            raise errors.Unauthorized(sub_topic)
        if params.replay is not None and not params.private:
            raise errors.UnableToReplayMessages("Replay is not allowed for public channels")
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
        )

    def _leave(self, msg: Message, ch: Channel | None) -> list[Effect]:
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
        if ch.tracked:
            effects.append(Untrack(ch.stream, ch.topic))
        if ch.bindings:
            effects.append(UnsubscribePostgres(ch.topic))
        return effects

    def _shutdown(self, ch: Channel, message: str) -> list[Effect]:
        """§8 "shut down": system error, then phx_close; the socket stays open."""
        self.channels.pop(ch.topic, None)
        effects = self._teardown(ch)
        effects.append(Send(system_message(ch, "error", message)))
        effects.append(Send(phx_close(ch)))
        return effects

    def _deadline(self, claims: Mapping[str, Any], now: float) -> float:
        exp = claims.get("exp")
        recheck = now + self.config.token_recheck_s
        return min(float(exp), recheck) if isinstance(exp, int | float) else recheck

    # broadcast -------------------------------------------------------------------------------

    def _broadcast(self, ch: Channel, msg: Message, size: int) -> list[Effect]:
        if not isinstance(msg.payload, dict):
            return []  # §4.1: the payload is an object; anything else cannot be relayed
        b = Broadcast(ch.topic, payload=msg.payload)
        return self._publish(ch, msg, b, size)

    def _binary_broadcast(self, push: BinaryBroadcastPush, size: int) -> list[Effect]:
        ch = self.channels.get(push.topic)
        if ch is None:
            return [Send(unmatched(push))]
        # §4.3: kind-3 metadata (only ``persist``) is not forwarded; receivers get no metadata.
        b = Broadcast(ch.topic, event=push.event, data=push.data, binary=push.binary)
        return self._publish(ch, push, b, size)

    def _publish(self, ch: Channel, msg: Message | BinaryBroadcastPush, b: Broadcast, size: int) -> list[Effect]:
        ack = ch.params.broadcast_ack
        if size > self.config.max_payload_bytes:  # §4.5
            return [Send(reply(msg, error_payload("payload_size_exceeded"), ch.join_ref))] if ack else []
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
        if not ch.presence_window.hit(now):  # §5.7 per-channel window
            return self._shutdown(ch, "Client presence rate limit exceeded")
        if event == "untrack":
            effects: list[Effect] = [Send(reply(msg, ok_payload(), ch.join_ref))]
            if ch.tracked:
                ch.tracked = False
                effects.append(Untrack(ch.stream, ch.topic))
            return effects
        payload = body.get("payload", {})
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            reason = {"reason": "Presence track payload must be a map"}
            return [Send(reply(msg, error_payload(reason), ch.join_ref))]
        if size > self.config.max_payload_bytes:
            return self._shutdown(ch, "Track message size exceeded")
        ch.tracked = True
        return [
            Send(reply(msg, ok_payload(), ch.join_ref)),
            Track(ch.stream, ch.topic, ch.presence_key, payload),
        ]

    # token refresh ---------------------------------------------------------------------------

    def _access_token(self, ch: Channel, token: Any, now: float) -> list[Effect]:
        """§3.9: never replied to; a bad token shuts the channel down."""
        if token is None or token == ch.token or (isinstance(token, str) and token.startswith("sb_")):
            return []
        if not isinstance(token, str):
            return self._shutdown(ch, errors.MalformedJWT().message)
        try:
            claims = self.verify(token, now)
        except errors.RealtimeError as err:
            return self._shutdown(ch, err.message)
        ch.token, ch.claims = token, claims
        ch.deadline = self._deadline(claims, now)
        if ch.bindings:
            return [SubscribePostgres(ch.topic, ch.join_ref, ch.bindings, claims)]
        return []
