"""Errors of joins, pushes, function gates and undecodable frames."""

from __future__ import annotations

from typing import ClassVar

from .base import *  # noqa: F403
from .auth import *  # noqa: F403


# --- channel / join errors (protocol.md §3.5, §8) ---------------------------------------


class JoinError(PeerError):
    """Base of the errors that refuse a ``phx_join``."""

    where: ClassVar[Places] = (JOIN_REPLY,)


class TopicNameRequired(JoinError):
    """The topic is ``realtime:`` with nothing after it."""

    code = "TopicNameRequired"
    message = "You must provide a topic name"


class ConnectionRateLimitReached(JoinError):
    """The tenant's concurrent-user limit is reached (``REALTIME_MAX_CONCURRENT_USERS``)."""

    code = "ConnectionRateLimitReached"
    message = "Too many connected users"
    http_status = 429
    where: ClassVar[Places] = (HANDSHAKE, JOIN_REPLY)


class AddressConnectionLimitReached(PeerError):
    """One client address holds ``REALTIME_MAX_CONNECTIONS_PER_ADDRESS`` open sockets on this
    server process already (opt-in; off by default): the upgrade is refused with 429."""

    code = "ConnectionRateLimitReached"
    message = "Too many connections from this client address"
    http_status = 429
    where: ClassVar[Places] = (HANDSHAKE,)


class ClientJoinRateLimitReached(JoinError):
    """The tenant's join rate is exceeded (``REALTIME_MAX_JOINS_PER_SECOND``); after the join
    reply the socket is closed."""

    code = "ClientJoinRateLimitReached"
    message = "Too many joins per second"
    http_status = 429
    where: ClassVar[Places] = (HANDSHAKE, JOIN_REPLY, CLOSE)
    close_code = 1001
    close_reason = "too many joins"


class ChannelRateLimitReached(JoinError):
    """The socket already has ``REALTIME_MAX_CHANNELS_PER_CLIENT`` channels."""

    code = "ChannelRateLimitReached"
    message = "Too many channels"


class PrivateOnly(JoinError):
    """The server only allows private channels and the join asks for a public one."""

    code = "PrivateOnly"
    message = "This project only allows private channels"


class Unauthorized(JoinError):
    """A private channel without read permission: the policies on ``realtime.messages`` grant
    neither broadcast-read nor presence-read (or could not be evaluated), or replay was asked
    without broadcast-read.  After a token refresh that loses every read right the channel is
    shut down with the message."""

    code = "Unauthorized"
    message = "You do not have permissions to read from this Channel topic: <sub-topic>"
    where: ClassVar[Places] = (JOIN_REPLY, SYSTEM)

    def __init__(self, sub_topic: str) -> None:
        super().__init__(f"You do not have permissions to read from this Channel topic: {sub_topic}")


class PermissionLost(PeerError):
    """After a token refresh, a read right the channel held (broadcast-read or presence-read)
    is no longer granted."""

    code = "Unauthorized"
    message = "You no longer have permission to read from this Channel topic: <sub-topic>"
    where: ClassVar[Places] = (SYSTEM,)

    def __init__(self, sub_topic: str) -> None:
        super().__init__(f"You no longer have permission to read from this Channel topic: {sub_topic}")


class UnableToReplayMessages(JoinError):
    """Base of the refusals of ``config.broadcast.replay``."""

    code = "UnableToReplayMessages"


class ReplayNotAllowed(UnableToReplayMessages):
    """``replay`` was asked on a public channel (replay reads private channels' messages)."""

    message = "Replay is not allowed for public channels"


class ReplayParamsInvalid(UnableToReplayMessages):
    """``since`` is missing or not an integer, or ``limit`` is not an integer."""

    message = "Replay params are not valid"


class UnableToResumeMessages(JoinError):
    """Base of the refusals of ``config.broadcast.resume``."""

    code = "UnableToResumeMessages"


class ResumeParamsInvalid(UnableToResumeMessages):
    """``resume`` is neither ``true`` nor ``{"epoch": <string>, "offset": <integer ≥ 0>}``."""

    message = "Resume parameters are invalid"


class ResumeDisabled(UnableToResumeMessages):
    """``resume`` was asked of a server whose ``REALTIME_RESUME_WINDOW_S`` is 0 (no retention)."""

    message = "Resume is not enabled on this server"


class UnableToConnectToProject(PeerError):
    """The database could not evaluate a private channel's policies after a token refresh:
    the channel is shut down (the system message carries no code)."""

    code = "UnableToConnectToProject"
    message = "Realtime was unable to connect to the project database"
    where: ClassVar[Places] = (SYSTEM,)


class ReplicationNotReady(PeerError):
    """A channel with ``postgres_changes`` waited 60 s for the replication stream to start."""

    code = "ReplicationNotReady"
    message = "Replication connection was not established in time"
    where: ClassVar[Places] = (SYSTEM,)


class AuthzUnavailable(InternalError):
    """The channel's authorization policies could not be evaluated (database unreachable, a
    query or policy failed, a time-out).  Treated as denial: a join is refused with
    ``Unauthorized``, a later write is dropped."""

    message = "Unable to evaluate the channel's authorization policies"
    where: ClassVar[Places] = (LOG,)


# --- pushes on a joined channel (protocol.md §2.4, §4, §5, §8) ---------------------------


class UnmatchedTopic(PeerError):
    """A push to a topic this socket has not joined, or a ``phx_join`` whose topic does not
    start with ``realtime:``."""

    code = ""
    message = "unmatched topic"
    where: ClassVar[Places] = (PUSH_REPLY,)


class PayloadSizeExceeded(PeerError):
    """A broadcast larger than the payload limit (``REALTIME_MAX_PAYLOAD_SIZE_IN_KB`` × 1000 +
    500 bytes) is not delivered; with ``ack`` the reply's ``response`` is this bare string."""

    code = ""
    message = "payload_size_exceeded"
    where: ClassVar[Places] = (PUSH_REPLY,)
    bare_response = True


class UnableToPersistMessage(PeerError):
    """Base of the refusals of a broadcast sent with ``persist`` (protocol.md §4.9): nothing is
    stored and nothing is broadcast.  The reply's ``response`` is
    ``{"error": "UnableToPersistMessage: …", "reason": …}`` (the same text twice; realtime-js
    returns ``error`` from ``send()``), a REST call gets the text as its ``message``."""

    code = "UnableToPersistMessage"
    http_status = 422
    where: ClassVar[Places] = (PUSH_REPLY, REST)

    @property
    def response(self) -> dict[str, str]:
        return {"error": self.reason, "reason": self.reason}

    @property
    def rest_message(self) -> str:
        return self.reason


class PersistNotPrivate(UnableToPersistMessage):
    """``persist`` on a public channel: only private channels store messages."""

    message = "Only broadcasts of private channels can be persisted"


class PersistParamsInvalid(UnableToPersistMessage):
    """``persist`` is neither ``true`` nor ``{"ttl": <seconds>}`` (REST: ``persist=true`` or
    ``persist[ttl]=<seconds>``) with a whole number of seconds from 1 to 2147483647."""

    message = "persist must be true or {\"ttl\": <seconds>} with a positive integer ttl"


class PersistDenied(UnableToPersistMessage):
    """No INSERT policy on ``realtime.messages`` lets the caller insert a row with
    ``extension = 'persistence'`` for the topic (checked on every persisted broadcast)."""

    message = "You do not have permissions to persist messages on this Channel topic: <sub-topic>"
    http_status = 403

    def __init__(self, sub_topic: str) -> None:
        super().__init__(f"You do not have permissions to persist messages on this Channel topic: {sub_topic}")


class PersistFailed(UnableToPersistMessage):
    """The database could not store the message (unreachable, a time-out, a policy, trigger or
    constraint failing); the server log has the details."""

    message = "The message could not be stored"
    http_status = 500


class PresencePayloadNotMap(PeerError):
    """A presence ``track`` whose ``payload`` is not a JSON object."""

    code = ""
    message = "Presence track payload must be a map"
    where: ClassVar[Places] = (PUSH_REPLY,)


class PresenceStateTooLarge(PeerError):
    """A presence ``track`` that would make its topic's presence state (every member's meta,
    on every node) larger than ``REALTIME_MAX_PRESENCE_STATE_BYTES``: nothing is tracked, the
    channel's earlier presence (if any) stays, and the channel stays joined."""

    code = ""
    message = "presence state of this topic would exceed its size limit"
    where: ClassVar[Places] = (PUSH_REPLY,)


class ChannelShutdown(PeerError):
    """Base of the limits that shut a channel down (system message, then ``phx_close``); the
    socket stays open.  Supabase sends no code with these: ``code`` names them in logs only."""

    where: ClassVar[Places] = (SYSTEM,)


class MessageRateLimitReached(ChannelShutdown):
    """The tenant's event rate (``REALTIME_MAX_EVENTS_PER_SECOND``) is exceeded when the
    channel sends a broadcast."""

    code = "MessageRateLimitReached"
    message = "Too many messages per second"


class ClientPresenceRateLimitReached(ChannelShutdown):
    """More presence pushes on one channel than the per-channel window allows
    (``REALTIME_MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW`` per ``REALTIME_CLIENT_PRESENCE_WINDOW_MS``,
    5 per 30 s by default)."""

    code = "ClientPresenceRateLimitReached"
    message = "Client presence rate limit exceeded"


class PresenceRateLimitReached(ChannelShutdown):
    """The tenant's presence rate (``REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND``) is exceeded."""

    code = "PresenceRateLimitReached"
    message = "Too many presence messages per second"


class TrackMessageSizeExceeded(ChannelShutdown):
    """A presence ``track`` larger than the payload limit."""

    code = "TrackMessageSizeExceeded"
    message = "Track message size exceeded"


# --- functions: authorize_join / authorize_send gates ------------------------------------


class FunctionDenied(PeerError):
    """An ``authorize_join`` or ``authorize_send`` function answered ``allow: false`` without a
    ``reason``; when it gives one, that reason is sent instead."""

    code = ""
    message = "denied"
    where: ClassVar[Places] = (JOIN_REPLY, PUSH_REPLY)


class FunctionUnavailable(PeerError):
    """An authorization function failed (error, time-out, or a reply without a boolean
    ``allow``) and its gate fails closed."""

    code = ""
    message = "authorization function unavailable"
    where: ClassVar[Places] = (JOIN_REPLY, PUSH_REPLY)


# --- frames that cannot be decoded (protocol.md §2.4) ------------------------------------


class DecodeError(PeerError, ValueError):
    """An inbound frame that cannot be decoded (not JSON, wrong shape, truncated binary): it
    is logged at debug level and ignored; the peer gets no answer."""

    code = "DecodeError"
    message = "undecodable frame"
    where: ClassVar[Places] = (LOG,)


class PayloadTooDeep(DecodeError):
    """A push whose JSON nests objects and arrays more than 128 levels deep is not processed;
    when its topic and ref can be read it is answered with this reason, otherwise ignored."""

    code = ""
    message = "payload nested more than 128 levels deep"
    where: ClassVar[Places] = (PUSH_REPLY,)

    def __init__(self, topic: str | None = None, ref: str | None = None, join_ref: str | None = None) -> None:
        super().__init__()
        self.topic = topic
        self.ref = ref
        self.join_ref = join_ref

__all__ = ["JoinError", "TopicNameRequired", "ConnectionRateLimitReached", "AddressConnectionLimitReached", "ClientJoinRateLimitReached", "ChannelRateLimitReached", "PrivateOnly", "Unauthorized", "PermissionLost", "UnableToReplayMessages", "ReplayNotAllowed", "ReplayParamsInvalid", "UnableToConnectToProject", "ReplicationNotReady", "AuthzUnavailable", "UnmatchedTopic", "PayloadSizeExceeded", "UnableToPersistMessage", "PersistNotPrivate", "PersistParamsInvalid", "PersistDenied", "PersistFailed", "PresencePayloadNotMap", "PresenceStateTooLarge", "ChannelShutdown", "MessageRateLimitReached", "ClientPresenceRateLimitReached", "PresenceRateLimitReached", "TrackMessageSizeExceeded", "FunctionDenied", "FunctionUnavailable", "DecodeError", "PayloadTooDeep", "UnableToResumeMessages", "ResumeParamsInvalid", "ResumeDisabled"]
