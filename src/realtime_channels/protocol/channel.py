"""A session's per-channel state and the messages built from it (sans-I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from orjson import Fragment

from .. import errors
from .codec import BinaryBroadcastPush, Broadcast, Message
from .effects import Effect, ReplayedMessage, Send, SendBinary
from .join import JoinParams
from .keys import StreamKey
from .limits import FixedWindow
from .offsets import parse_offset


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
    #: §4.10: the backbone assigns offsets and retains broadcasts (``REALTIME_RESUME_WINDOW_S`` > 0)
    resume_enabled: bool = True
    #: §5.7: a presence push over the per-channel window shuts the channel down (Supabase), or
    #: (``"coalesce"``) is accepted and the latest of such pushes applied when the window opens
    presence_over_limit: str = "shutdown"


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
    #: the channels this join replaced (§2.5) — an open one, or a join still waiting for its
    #: checks and whatever that one replaced — each closed right after this join's reply
    replaces: tuple[Channel, ...] = ()
    #: the ``ref`` of the phx_join this channel answers
    join_msg_ref: str | None = None
    #: a join waiting for its postgres_changes subscriptions (pgwait.py): the replayed
    #: messages it holds meanwhile, and whether the subscriptions are live
    held: tuple[ReplayedMessage, ...] = ()
    pg_live: bool = False
    #: broadcasts carry offsets; ``resume`` = (epoch, offset) to replay after (§4.10)
    offsets: bool = False
    resume: tuple[str, int] | None = None
    #: postgres changes carry offsets; ``pg_resume`` = (end LSN, index) to resume after (§4.10)
    pg_offsets: bool = False
    pg_resume: tuple[int, int] | None = None
    #: §5.7 ``coalesce``: the latest presence push over the window (event, payload), applied at
    #: ``presence_due``
    presence_pending: tuple[str, dict[str, Any]] | None = None
    presence_due: float | None = None

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


def resume_params(raw: Any, enabled: bool) -> tuple[bool, tuple[str, int] | None]:
    """§4.10 ``config.broadcast.resume``: (offsets on, where to resume from)."""
    if raw is None or raw is False:
        return False, None
    if raw is True:
        position = None
    elif isinstance(raw, dict) and isinstance(raw.get("epoch"), str) and type(raw.get("offset")) is int \
            and raw["offset"] >= 0:
        position = (raw["epoch"], raw["offset"])
    else:
        raise errors.ResumeParamsInvalid()
    if not enabled:
        raise errors.ResumeDisabled()
    return True, position


def pg_resume_params(raw: Any, enabled: bool) -> tuple[bool, tuple[int, int] | None]:
    """§4.10 ``config.postgres_changes_options.resume``: (offsets on, where to resume from)."""
    if raw is None or raw is False:
        return False, None
    if raw is True:
        position = None
    elif isinstance(raw, dict) and (position := parse_offset(raw.get("offset"))) is not None:
        pass
    else:
        raise errors.ResumeParamsInvalid()
    if not enabled:
        raise errors.ResumeDisabled()
    return True, position


def gap_message(ch: Channel, missed: int | None, epoch: str, next_offset: int) -> Message:
    """§4.10: broadcasts a resume cannot replay any more, said before what follows them."""
    text = (f"ResumeGap: {missed} messages are no longer retained" if missed is not None else
            "ResumeGap: the messages after the given offset are no longer retained (how many is unknown)")
    msg = system_message(ch, "ok", text, extension="broadcast")
    msg.payload["gap"] = {"missed": missed, "epoch": epoch, "next": next_offset}
    return msg


def phx_close(ch: Channel) -> Message:
    """§3.7: ``ref`` and ``join_ref`` both carry the closed join's ref."""
    return Message(ch.topic, "phx_close", {}, ref=ch.join_ref, join_ref=ch.join_ref)



def replay_effects(ch: Channel, replayed: tuple[ReplayedMessage, ...]) -> list[Effect]:
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


def broadcast_of(ch: Channel, msg: Message | BinaryBroadcastPush) -> Broadcast:
    if isinstance(msg, BinaryBroadcastPush):
        # §4.3: kind-3 metadata (only ``persist``) is not forwarded; receivers get none.
        return Broadcast(ch.topic, event=msg.event, data=msg.data, binary=msg.binary)
    return Broadcast(ch.topic, payload=msg.payload)


def gate_subject(msg: Message | BinaryBroadcastPush) -> tuple[str | None, Any]:
    """(user event, payload) of a client broadcast, as a send gate sees it."""
    if isinstance(msg, BinaryBroadcastPush):
        return msg.event, (msg.data if msg.binary else orjson.loads(msg.data))
    event = msg.payload.get("event") if isinstance(msg.payload, dict) else None
    return (event if isinstance(event, str) else None), msg.payload.get("payload")


def rewritten(msg: Message | BinaryBroadcastPush, payload: Any) -> Message | BinaryBroadcastPush:
    """A broadcast whose user payload a send gate replaced (a binary one becomes JSON)."""
    if isinstance(msg, BinaryBroadcastPush):
        return BinaryBroadcastPush(msg.join_ref, msg.ref, msg.topic, msg.event, msg.metadata, orjson.dumps(payload),
                                   False)  # the metadata (``persist``, §4.9) still applies
    return Message(msg.topic, msg.event, {**msg.payload, "payload": payload}, ref=msg.ref, join_ref=msg.join_ref)


def join_message(ch: Channel) -> Message:
    """The phx_join a parked private channel answers."""
    return Message(ch.topic, "phx_join", {}, ref=ch.join_msg_ref, join_ref=ch.join_ref)
