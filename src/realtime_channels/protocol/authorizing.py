"""The session's answers to the adapter: function-gate verdicts, private-channel
authorization results and resume histories (methods of ``Session``, kept here by topic; sans-I/O)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors
from .channel import (
    Channel,
    gap_message,
    broadcast_of,
    error_payload,
    join_message,
    phx_close,
    ok_payload,
    reply,
    rewritten,
    unmatched,
)
from .codec import BinaryBroadcastPush, Message
from .effects import (
    AuthResult,
    Authorize,
    BROADCAST_READ,
    Effect,
    GATE,
    GATE_JOIN,
    GateVerdict,
    PERSIST,
    PersistResult,
    PRESENCE_READ,
    ReleaseResume,
    ResumeAnswer,
    Send,
    Subscribe,
)

if TYPE_CHECKING:
    from .session import Session


# function gates --------------------------------------------------------------------------

def gated(self: Session, topic: str, join_ref: str | None, purpose: str, verdict: GateVerdict,
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
        effects: list[Effect] = [Send(phx_close(old)) for old in ch.replaces]
        reason = verdict.reason or errors.JoinDenied().message
        effects.append(Send(reply(join_message(ch), error_payload({"reason": reason}), ch.join_ref)))
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
            msg = rewritten(msg, verdict.payload)
        effects = self._publish(ch, msg, broadcast_of(ch, msg), now, size, gated=True)
    return effects + self._drain(ch, now)

# authorization answers (§7.3) --------------------------------------------------------------

def authorized(self: Session, topic: str, join_ref: str | None, purpose: str, result: AuthResult,
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

def join_authorized(self: Session, ch: Channel, result: AuthResult, now: float) -> list[Effect]:
    ch.pending.clear()
    read_b = result.error is None and result.granted.get(BROADCAST_READ, False)
    read_p = result.error is None and result.granted.get(PRESENCE_READ, False)
    # §3.3 step 6: join refused unless broadcast-read or presence-read; replay needs
    # broadcast-read (§4.8); policy errors count as denial (§7.3)
    if not (read_b or read_p) or (ch.replay is not None and not read_b):
        err = errors.Unauthorized(ch.sub_topic)
        queued, ch.queue = ch.queue, []
        effects = self._join_error(join_message(ch), err, ch.replaces)
        for msg, _ in queued:  # the client's pushes for a topic that never joined
            effects.append(Send(unmatched(msg)))
        return effects
    ch.rights[BROADCAST_READ] = read_b
    if PRESENCE_READ in result.granted:
        ch.rights[PRESENCE_READ] = read_p
    return self._activate(ch, result.replayed, now)

def refresh_authorized(self: Session, ch: Channel, result: AuthResult) -> list[Effect]:
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

def write_authorized(self: Session, ch: Channel, result: AuthResult, now: float) -> list[Effect]:
    effects: list[Effect] = []
    for check in ch.pending & set(result.granted) | (ch.pending if result.error else set()):
        granted = result.error is None and result.granted.get(check, False)
        if check == PRESENCE_READ and granted and not ch.rights.get(PRESENCE_READ):
            effects.append(Subscribe(ch.presence_stream, ch.topic))
        ch.rights[check] = granted
    ch.pending.clear()
    return effects + self._drain(ch, now)

def need(self: Session, ch: Channel, msg: Message | BinaryBroadcastPush, size: int, checks: tuple[str, ...]) -> list[Effect]:
    """Park ``msg`` until the lazily evaluated ``checks`` are answered (§4.4, §5.5)."""
    ch.queue.insert(0, (msg, size))
    if ch.pending:
        return []
    ch.pending.update(checks)
    return [Authorize(ch.topic, ch.join_ref, "write", ch.sub_topic, ch.claims, checks)]


# persisted broadcasts (§4.9) ---------------------------------------------------------------

def persisted(self: Session, topic: str, join_ref: str | None, result: PersistResult,
              now: float) -> list[Effect]:
    """The adapter's answer to ``Persist`` (which already broadcast a stored message): ``ok``
    when ``ack`` is on, or the ``UnableToPersistMessage`` error whatever ``ack``."""
    ch = self.channels.get(topic)
    if ch is None or ch.join_ref != join_ref or PERSIST not in ch.pending or not ch.queue:
        return []  # left, superseded or shut down meanwhile
    ch.pending.discard(PERSIST)
    msg, _ = ch.queue.pop(0)
    effects: list[Effect] = []
    if result.id is None:
        err = errors.PersistDenied(ch.sub_topic) if result.denied else errors.PersistFailed()
        effects.append(Send(reply(msg, error_payload(err.response), ch.join_ref)))
    elif ch.params.broadcast_ack:
        effects.append(Send(reply(msg, ok_payload(), ch.join_ref)))
    return effects + self._drain(ch, now)

# resume (§4.10) ----------------------------------------------------------------------------

def resumed(self: Session, topic: str, join_ref: str | None, answer: ResumeAnswer) -> list[Effect]:
    """The adapter's answer to ``ResumeBroadcasts``: the gap (if any), then the replay and
    the live broadcasts held meanwhile."""
    ch = self.channels.get(topic)
    if ch is None or ch.join_ref != join_ref or ch.resume is None:
        return []  # left or superseded meanwhile: its hold went with its subscription
    asked_epoch, after = ch.resume
    effects: list[Effect] = []
    if answer.gap:
        effects.append(Send(gap_message(ch, answer.missed, answer.epoch, answer.next)))
    covered = after if answer.epoch == asked_epoch else 0
    effects.append(ReleaseResume(ch.stream, ch.topic, answer.epoch, answer.entries, covered))
    return effects
