"""What a session asks its adapter to do (its *effects*) and the answers it is given (sans-I/O).

The adapter executes effects in order; those that need I/O (policy checks, function gates, the
replication-ready wait) are answered by calling the session back (``Session.authorized``,
``Session.gated``, ``Session.replication``, ``Session.postgres_ready``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .codec import Broadcast, Message
from .keys import StreamKey


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``message`` to this socket, after ``delay`` seconds (join-error back-off §3.3)."""

    message: Message
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Start delivering ``stream`` to this socket's channel ``topic``; broadcasts whose
    ``meta.id`` is in ``skip_ids`` were already delivered by replay (§4.8)."""

    stream: StreamKey
    topic: str
    skip_ids: frozenset[str] = frozenset()
    #: broadcasts carry ``meta.offset``/``meta.epoch``; ``hold``: live ones wait for the
    #: ``ReleaseResume`` that follows a ``ResumeBroadcasts`` (protocol.md §4.10)
    offsets: bool = False
    hold: bool = False


@dataclass(frozen=True, slots=True)
class ResumeBroadcasts:
    """Read the retained broadcasts of ``stream`` after ``offset`` of ``epoch`` and answer with
    ``Session.resumed(topic, join_ref, answer)``."""

    stream: StreamKey
    topic: str
    join_ref: str | None
    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class ResumeAnswer:
    """What the stream retains for a resume: the entries to replay in the stream's current
    ``epoch``, and the gap before them (``gap``; ``missed`` ``None`` = unknown count)."""

    epoch: str
    entries: tuple[tuple[int, Broadcast], ...]
    gap: bool = False
    missed: int | None = None
    next: int = 0


@dataclass(frozen=True, slots=True)
class ReleaseResume:
    """Write the replay to the held channel (marked ``replayed``), then the live broadcasts
    held meanwhile that neither it nor the client (``epoch`` up to ``covered``) has seen."""

    stream: StreamKey
    topic: str
    epoch: str
    entries: tuple[tuple[int, Broadcast], ...]
    covered: int


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    stream: StreamKey
    topic: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Fan ``broadcast`` out to every subscriber of ``stream``; ``exclude`` is the sending
    channel's topic on this socket when ``self`` is off (§4.2)."""

    stream: StreamKey
    broadcast: Broadcast
    exclude: str | None


@dataclass(frozen=True, slots=True)
class Track:
    """Track this channel's presence, then send ``accepted`` — or ``refused`` (nothing tracked)
    when the topic's presence state would grow past its bound."""

    stream: StreamKey
    topic: str
    key: str
    payload: Mapping[str, Any]
    #: the push's reply, tracked or not; ``None``: a deferred track (§5.7 coalesce) has no push left to answer
    accepted: Message | None
    refused: Message | None


@dataclass(frozen=True, slots=True)
class Untrack:
    stream: StreamKey
    topic: str


@dataclass(frozen=True, slots=True)
class PushPresenceState:
    """Send the stream's current ``presence_state`` to this channel (§5.2)."""

    stream: StreamKey
    topic: str
    join_ref: str | None


@dataclass(frozen=True, slots=True)
class SubscribePostgres:
    """Create the channel's postgres_changes subscriptions with these claims (§6.3)."""

    topic: str
    join_ref: str | None
    bindings: tuple[dict[str, Any], ...]
    claims: Mapping[str, Any]
    #: §4.10 ``postgres_changes_options.resume``: messages carry offsets; ``resume_from`` the
    #: (end LSN, index) to send the retained changes after (the join's subscription only)
    offsets: bool = False
    resume_from: tuple[int, int] | None = None
    #: bindings with ``snapshot: true`` read their snapshot (§6.10) — not on a token refresh
    snapshot: bool = True


@dataclass(frozen=True, slots=True)
class AwaitPostgres:
    """§3.11 ``postgres_changes_options.wait``: create the channel's postgres_changes
    subscriptions (as ``SubscribePostgres`` does, but without their ``system`` messages) and
    answer with ``Session.postgres_ready(topic, join_ref, error, now)`` as soon as every binding
    is live (``error`` None), was refused for good (``RealtimeDisabledForConfiguration``), or
    after ``timeout_ms`` (``PostgresChangesSubscribeTimeout``).  Transient failures are retried
    meanwhile.  The answer for live bindings must run before any change is routed to them."""

    topic: str
    join_ref: str | None
    bindings: tuple[dict[str, Any], ...]
    claims: Mapping[str, Any]
    timeout_ms: int
    offsets: bool = False
    resume_from: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class UnsubscribePostgres:
    topic: str


BROADCAST_READ = "broadcast_read"
PRESENCE_READ = "presence_read"
BROADCAST_WRITE = "broadcast_write"
PRESENCE_WRITE = "presence_write"


@dataclass(frozen=True, slots=True)
class Authorize:
    """Evaluate the RLS policies on ``realtime.messages`` for a private channel (§7.3) and
    answer with ``Session.authorized(topic, join_ref, purpose, result, now)``.

    ``purpose`` is ``"join"``, ``"refresh"`` (after ``access_token``) or ``"write"``;
    ``replay`` = (since_ms, limit) asks for the stored messages too (§4.8).
    """

    topic: str
    join_ref: str | None
    purpose: str
    sub_topic: str
    claims: Mapping[str, Any]
    checks: tuple[str, ...]
    replay: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class ReplayedMessage:
    id: str
    event: str
    payload_json: bytes | None
    binary: bytes | None


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The adapter's answer to ``Authorize``; ``error`` when the policies could not be run."""

    granted: Mapping[str, bool]
    replayed: tuple[ReplayedMessage, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SendBinary:
    """Write a user broadcast with binary ``data`` as a kind-4 frame (§1.6), to a V2 socket
    only: a V1 socket cannot carry bytes, and nothing is sent to it."""

    topic: str
    event: str
    meta: Mapping[str, Any]
    data: bytes


@dataclass(frozen=True, slots=True)
class AwaitReplication:
    """§3.7 ``replication_ready``: answer with ``Session.replication(topic, join_ref, ready)``
    once the database replication stream is up, or with ``ready=False`` when it did not come
    up in time."""

    topic: str
    join_ref: str | None


#: a channel's pending marker while a persisted broadcast is being stored (§4.9)
PERSIST = "persist"


@dataclass(frozen=True, slots=True)
class Persist:
    """§4.9: store the broadcast in ``realtime.messages`` (if the persistence INSERT policy
    allows it), then — only once it is stored — execute ``publish`` with ``meta.id`` = the
    stored row's id, and answer with ``Session.persisted(topic, join_ref, result, now)``.
    ``ttl``: seconds the message is kept for replay (``None``: the table's retention)."""

    topic: str
    join_ref: str | None
    sub_topic: str
    claims: Mapping[str, Any]
    event: str
    data: bytes
    binary: bool
    ttl: int | None
    publish: Publish


@dataclass(frozen=True, slots=True)
class PersistResult:
    """The adapter's answer to ``Persist``: the stored row's ``id``; or ``denied`` by the
    policies; or neither (the database failed)."""

    id: str | None = None
    denied: bool = False


GATE = "gate"
GATE_JOIN = "join"
GATE_SEND = "send"


@dataclass(frozen=True, slots=True)
class GateJoin:
    """Run the ``authorize_join`` function gates on a join whose token is already verified;
    answer with ``Session.gated(topic, join_ref, GATE_JOIN, verdict, now)``."""

    topic: str
    join_ref: str | None
    sub_topic: str
    claims: Mapping[str, Any]
    config: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class GateSend:
    """Run the ``authorize_send`` function gates on a client broadcast; answer with
    ``Session.gated(topic, join_ref, GATE_SEND, verdict, now)``."""

    topic: str
    join_ref: str | None
    sub_topic: str
    event: str
    payload: Any
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """The gates' answer: deny (with the function's reason), or allow, ``payload`` being the
    rewritten broadcast payload (``None``: unchanged)."""

    allow: bool
    reason: str | None = None
    payload: Any = None


#: ``(kind, sub_topic, event)`` → whether a function gate applies (checked without I/O)
GateCheck = Callable[[str, str, str | None], bool]


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket with ``code`` after ``delay`` seconds (e.g. 1001 after a join-rate refusal)."""

    code: int
    reason: str
    delay: float = 0.0


Effect = (
    Send
    | Authorize
    | SendBinary
    | AwaitReplication
    | GateJoin
    | GateSend
    | Close
    | Persist
    | Subscribe
    | ResumeBroadcasts
    | ReleaseResume
    | Unsubscribe
    | Publish
    | Track
    | Untrack
    | PushPresenceState
    | SubscribePostgres
    | AwaitPostgres
    | UnsubscribePostgres
)
