"""The session's handling of pushes on a joined channel: broadcast, presence and token
refresh (methods of ``Session``, kept here by topic; sans-I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TYPE_CHECKING

from .. import errors
from .channel import Channel, error_payload, gate_subject, ok_payload, reply
from .codec import BinaryBroadcastPush, Broadcast, Message, persist_ttl
from .effects import (
    Authorize,
    BROADCAST_READ,
    BROADCAST_WRITE,
    Effect,
    GATE,
    GateSend,
    PERSIST,
    Persist,
    PRESENCE_READ,
    PRESENCE_WRITE,
    Publish,
    Send,
    SubscribePostgres,
    Track,
    Untrack,
)

if TYPE_CHECKING:
    from .session import Session


# broadcast -------------------------------------------------------------------------------

def publish(self: Session, ch: Channel, msg: Message | BinaryBroadcastPush, b: Broadcast, now: float,
             size: int, gated: bool = False) -> list[Effect]:
    persist, ttl = False, None
    if isinstance(msg, BinaryBroadcastPush) and msg.metadata is not None:  # §4.9
        try:
            persist, ttl = persist_ttl(msg.metadata)
        except ValueError:
            return [Send(reply(msg, error_payload(errors.PersistParamsInvalid().response), ch.join_ref))]
        if persist and not ch.private:
            return [Send(reply(msg, error_payload(errors.PersistNotPrivate().response), ch.join_ref))]
    if ch.private:
        allowed = ch.can(BROADCAST_WRITE)
        if allowed is None:
            return self._need(ch, msg, size, (BROADCAST_WRITE,))
        if not allowed:
            return []  # §4.2: unauthorized sends are dropped silently, even with ack
    if not gated and self.gates is not None:
        event, data = gate_subject(msg)
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
    if persist and isinstance(msg, BinaryBroadcastPush):
        # §4.9: stored first, broadcast once stored; later pushes wait behind the answer
        ch.queue.insert(0, (msg, size))
        ch.pending.add(PERSIST)
        return [Persist(ch.topic, ch.join_ref, ch.sub_topic, ch.claims, msg.event, msg.data, msg.binary, ttl,
                        Publish(ch.stream, b, exclude))]
    effects: list[Effect] = [Publish(ch.stream, b, exclude)]
    if ack:
        effects.append(Send(reply(msg, ok_payload(), ch.join_ref)))
    return effects

# presence --------------------------------------------------------------------------------

def presence(self: Session, ch: Channel, msg: Message, now: float, size: int) -> list[Effect]:
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
        if self.config.presence_over_limit != "coalesce":
            return self._shutdown(ch, errors.ClientPresenceRateLimitReached())
        return defer_presence(self, ch, msg, event, body, size, now)
    if event == "untrack":
        # §5.1: the diff a presence push causes reaches the channel before its reply
        effects: list[Effect] = []
        if ch.tracked:
            ch.tracked = False
            effects.append(Untrack(ch.presence_stream, ch.topic))
        effects.append(Send(reply(msg, ok_payload(), ch.join_ref)))
        return effects
    payload = track_payload(self, ch, msg, body, size)
    if isinstance(payload, list):
        return payload
    if self.limits is not None:
        if self.limits.presence_exceeded(now):  # §5.7 tenant presence rate
            return self._shutdown(ch, errors.PresenceRateLimitReached())
        self.limits.presence.add(now)
    ch.tracked = True
    refused = reply(msg, error_payload(errors.PresenceStateTooLarge().response), ch.join_ref)
    return [Track(ch.presence_stream, ch.topic, ch.presence_key, payload, reply(msg, ok_payload(), ch.join_ref),
                  refused)]

def track_payload(self: Session, ch: Channel, msg: Message, body: Mapping[str, Any], size: int
                  ) -> dict[str, Any] | list[Effect]:
    """A track's payload (absent or null: ``{}``), or the effects that refuse the push."""
    payload = body.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        return [Send(reply(msg, error_payload(errors.PresencePayloadNotMap().response), ch.join_ref))]
    if size > self.config.max_payload_bytes:
        return self._shutdown(ch, errors.TrackMessageSizeExceeded())
    return payload


def defer_presence(self: Session, ch: Channel, msg: Message, event: str, body: Mapping[str, Any], size: int,
                   now: float) -> list[Effect]:
    """§5.7 ``coalesce``: a push over the window is answered ok and kept — the latest one wins —
    until the window opens (``apply_deferred_presence``), instead of shutting the channel down."""
    payload: dict[str, Any] = {}
    if event == "track":
        checked = track_payload(self, ch, msg, body, size)
        if isinstance(checked, list):
            return checked
        payload = checked
    ch.presence_pending = (event, payload)
    ch.presence_due = ch.presence_window.opens_at(now)
    return [Send(reply(msg, ok_payload(), ch.join_ref))]


def apply_deferred_presence(self: Session, ch: Channel, now: float) -> list[Effect]:
    """The window opened: the channel's latest deferred presence push takes effect."""
    pending, ch.presence_pending, ch.presence_due = ch.presence_pending, None, None
    if pending is None or not ch.presence_window.hit(now):
        return []
    event, payload = pending
    if event == "untrack":
        if not ch.tracked:
            return []
        ch.tracked = False
        return [Untrack(ch.presence_stream, ch.topic)]
    if self.limits is not None:
        if self.limits.presence_exceeded(now):
            return self._shutdown(ch, errors.PresenceRateLimitReached())
        self.limits.presence.add(now)
    ch.tracked = True
    return [Track(ch.presence_stream, ch.topic, ch.presence_key, payload, None, None)]


# token refresh ---------------------------------------------------------------------------

def access_token(self: Session, ch: Channel, token: Any, now: float) -> list[Effect]:
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
        effects.append(SubscribePostgres(ch.topic, ch.join_ref, ch.bindings, claims, ch.pg_offsets, snapshot=False))
    return effects
