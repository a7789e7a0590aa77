"""One rooted error tree: every error a client or a REST caller can see is a class here, with its
Supabase code (protocol.md §3.5) and the text the peer sees.  Exception text of unexpected
failures never goes over the wire.

``PeerError`` is the peer's mistake (bad token, limit hit); ``InternalError`` is ours.

Each class that reaches a peer names *where* it appears (``where``, a tuple of the constants
below) and explains itself in its docstring; ``scripts/gen_error_codes.py`` builds
``docs/error-codes.md`` from them.  A class whose text carries a value shows it as ``<name>`` in
its class-level ``message``; the instance fills it in.
"""

from __future__ import annotations

from typing import ClassVar, TypeAlias

#: ``{"status": "error", "response": {"reason": "<Code>: <message>"}}`` answering a ``phx_join``
JOIN_REPLY = "join reply"
#: an error ``phx_reply`` answering a push on a joined channel (broadcast, presence, …)
PUSH_REPLY = "push reply"
#: the channel is shut down: ``system`` ``{"status": "error", "message": …}``, then ``phx_close``
SYSTEM = "system message"
#: the WebSocket is closed with ``close_code`` and ``close_reason``
CLOSE = "close frame"
#: a refused WebSocket upgrade: ``http_status`` with ``{"error": handshake_error}``
HANDSHAKE = "HTTP status"
#: a refused REST call (``/api/broadcast``…): ``http_status`` with ``{"message": message}``
REST = "REST reply"
#: written to the server log only; the peer sees another error (named in the docstring)
LOG = "server log"

#: the places one error appears
Places: TypeAlias = tuple[str, ...]


class RealtimeError(Exception):
    """Root of the tree. ``code`` is the Supabase error code, ``message`` the human text."""

    code: str = "UnknownErrorOnChannel"
    message: str = "Unknown Error on Channel"
    #: HTTP status used when this error refuses a WebSocket upgrade (protocol.md §1.4).
    http_status: int = 500
    #: ``error`` body of a refused upgrade; ``None`` means "Error connecting to Realtime".
    handshake_message: str | None = None
    #: where a peer sees this error (the constants above); empty: never sent (e.g. start-up)
    where: ClassVar[Places] = ()
    #: close frame sent with this error (``CLOSE`` in ``where``)
    close_code: ClassVar[int | None] = None
    close_reason: ClassVar[str | None] = None
    #: a push reply's ``response`` is the bare message instead of ``{"reason": …}``
    bare_response: ClassVar[bool] = False

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)

    @property
    def reason(self) -> str:
        """The ``<Code>: <message>`` join-error reason of protocol.md §3.5 (the bare message for
        errors that have no code on the wire)."""
        return f"{self.code}: {self.message}" if self.code else self.message

    @property
    def response(self) -> str | dict[str, str]:
        """The ``response`` of an error ``phx_reply`` carrying this error."""
        return self.message if self.bare_response else {"reason": self.reason}

    @property
    def handshake_error(self) -> str:
        return self.handshake_message if self.handshake_message is not None else self.message


class PeerError(RealtimeError):
    """The client did something the protocol refuses."""


class InternalError(RealtimeError):
    """Something failed on our side; the peer sees only the generic text, never the details."""

    http_status = 500
    handshake_message = "Error connecting to Realtime"
    where: ClassVar[Places] = (JOIN_REPLY, HANDSHAKE)

    @property
    def reason(self) -> str:  # §3.5: "Unknown Error on Channel" has no code prefix
        return "Unknown Error on Channel"


# --- JWT (protocol.md §7.1, §1.4, §3.5) -------------------------------------------------


class AuthError(PeerError):
    """The token was refused: the upgrade answers 401, a join gets the reason, and a channel
    whose token is refreshed to, or expires into, a bad one is shut down with the message."""

    code = "InvalidJWTToken"
    http_status = 401
    where: ClassVar[Places] = (HANDSHAKE, JOIN_REPLY, SYSTEM)


class TokenExpired(AuthError):
    """``exp`` is not in the future; ``<N>`` is how many seconds ago it passed.  A refused
    upgrade says only ``Token has expired``."""

    code = "InvalidJWTToken"
    message = "Token has expired <N> seconds ago"
    handshake_message = "Token has expired"

    def __init__(self, seconds_ago: int) -> None:
        self.seconds_ago = seconds_ago
        super().__init__(f"Token has expired {seconds_ago} seconds ago")


class MissingClaims(AuthError):
    """The token has no ``role`` or no ``exp`` claim."""

    code = "InvalidJWTToken"
    message = "Fields `role` and `exp` are required in JWT"


class MalformedJWT(AuthError):
    """The token is not a JWT at all (e.g. ``"potato"`` or an empty string)."""

    code = "MalformedJWT"
    message = "The token provided is not a valid JWT"


class TokenTooLarge(AuthError):
    """A token longer than 16,384 characters is refused before it is decoded or remembered."""

    code = "MalformedJWT"
    message = "The token provided is larger than 16384 characters"


class JwtSignatureError(AuthError):
    """The signature does not match the configured secret or JWKS key."""

    code = "JwtSignatureError"
    message = "Failed to validate JWT signature"


class JwtSignerError(AuthError):
    """No usable key for the token: an unsupported ``alg`` (``none`` included) or a ``kid``
    the JWKS does not hold.  With a ``kid`` the text names it:
    ``Failed to generate JWT signer for key ID (kid) "<kid>", check your JWT secret or JWKS
    configuration``."""

    code = "JwtSignerError"
    message = "Failed to generate JWT signer, check your JWT secret or JWKS configuration"

    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid
        if kid is not None:
            super().__init__(
                f'Failed to generate JWT signer for key ID (kid) "{kid}", '
                "check your JWT secret or JWKS configuration"
            )
        else:
            super().__init__()


class InvalidTokenStructure(AuthError):
    """The token's header or claims are not a JSON object: reported as a generic failure."""

    code = "UnknownErrorOnChannel"
    message = "Unknown Error on Channel"
    http_status = 500
    handshake_message = "Error connecting to Realtime"

    @property
    def reason(self) -> str:
        return "Unknown Error on Channel"


class ApiKeyMissing(AuthError):
    """The upgrade carries neither an ``apikey`` parameter nor an ``x-api-key`` header."""

    message = "API key is missing"
    where: ClassVar[Places] = (HANDSHAKE,)


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


class PresencePayloadNotMap(PeerError):
    """A presence ``track`` whose ``payload`` is not a JSON object."""

    code = ""
    message = "Presence track payload must be a map"
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


# --- configuration ----------------------------------------------------------------------


class ConfigError(RealtimeError):
    """Bad configuration: refuse to start with a clear message."""

    code = "ConfigError"


class DevSecretExposed(ConfigError):
    """``serve`` on an address other than loopback with neither ``REALTIME_JWT_SECRET`` nor
    ``REALTIME_JWT_JWKS``: anyone can mint tokens signed with the published development secret."""

    message = ("refusing to serve <host> with the development JWT secret, with which anyone can mint "
               "tokens: set REALTIME_JWT_SECRET or REALTIME_JWT_JWKS, bind to 127.0.0.1, or set "
               "REALTIME_ALLOW_DEV_SECRET=true")
    where: ClassVar[Places] = (LOG,)

    def __init__(self, host: str) -> None:
        super().__init__(self.message.replace("<host>", host))
# --- postgres_changes (protocol.md §6.3) ------------------------------------------------
# The ``message`` of a postgres_changes ``system`` reply with ``status: "error"``: Supabase's
# texts, and no code on the wire.  The channel stays joined (only its database subscription
# failed); each failure is also logged at warning with the same text.

#: ``{"extension": "postgres_changes", "status": "error", "message": …, "channel": <sub-topic>}``
POSTGRES_CHANGES = "postgres_changes system message"


class SubscribeError(PeerError):
    """Base of the errors that refuse a channel's postgres_changes bindings.  ``transient``
    errors are retried every few seconds; the others are final."""

    code = ""
    transient: ClassVar[bool] = False
    where: ClassVar[Places] = (POSTGRES_CHANGES,)


class FilterError(SubscribeError, ValueError):
    """A binding's ``filter`` does not parse (unknown operator, empty segment, ``in`` without
    parentheses…).  Also raised by the filter validator; its text then becomes the detail of
    ``SubscriptionRejected``."""

    message = "Error parsing `filter` params: <reason>"


class SubscriptionParamsMissing(SubscribeError):
    """A binding names neither ``schema`` nor ``table``."""

    message = ("No subscription params provided. Please provide at least a `schema` or `table` to "
               "subscribe to: <params>")

    def __init__(self, params_text: str) -> None:
        super().__init__(
            "No subscription params provided. Please provide at least a `schema` or `table` to "
            f"subscribe to: {params_text}"
        )


class SelectParamsInvalid(SubscribeError):
    """``select`` is not a list of column names."""

    message = (
        'Error parsing `select` params: expected a list of column name strings, e.g. select: ["col1", "col2"]'
    )


class SelectOnWildcard(SubscribeError):
    """``select`` is combined with a wildcard schema or table."""

    message = (
        "Column selection is not supported for wildcard subscriptions. "
        "Provide an explicit schema and table name."
    )


class UnknownEvent(SubscribeError):
    """``event`` is not ``INSERT``, ``UPDATE``, ``DELETE`` (any case) or ``*``.  Supabase reads
    such a value as ``*``; it is refused here so a typo (``INSERTS``) is not every change."""

    message = ("Unable to subscribe to changes with given parameters. Unknown event <event>: "
               'expected "INSERT", "UPDATE", "DELETE" or "*"')

    def __init__(self, event: str) -> None:
        self.event = event
        super().__init__(
            f"Unable to subscribe to changes with given parameters. Unknown event {event!r}: "
            'expected "INSERT", "UPDATE", "DELETE" or "*"'
        )


class NoRoleClaim(SubscribeError):
    """The channel's token has no ``role`` claim (the database role the changes are read as)."""

    message = "Unable to subscribe to changes with given parameters. The token has no role claim"


class TableNotPublished(SubscribeError):
    """No table of the publication matches the binding's schema and table."""

    message = ("Unable to subscribe to changes with given parameters. Please check Realtime is "
               "enabled for the given connect parameters: <params>")

    def __init__(self, params: str) -> None:
        super().__init__(
            "Unable to subscribe to changes with given parameters. Please check Realtime is "
            f"enabled for the given connect parameters: {params}"
        )


class SubscriptionRejected(SubscribeError):
    """The database side refused the binding: a filter or ``select`` column the role cannot
    select or that does not exist, a value that does not cast to the column type, an unknown
    role."""

    message = ("Unable to subscribe to changes with given parameters. An exception happened so please "
               "check your connect parameters: <params>. Exception: <detail>")

    def __init__(self, params: str, detail: str) -> None:
        self.detail = detail
        super().__init__(
            "Unable to subscribe to changes with given parameters. An exception happened so please "
            f"check your connect parameters: {params}. Exception: {detail}"
        )


class ChangesUnavailable(SubscribeError):
    """The replication stream is not running yet (or the database is unreachable): retried
    every 5 s until it succeeds; the reason goes to the server log."""

    message = "Realtime was unable to connect to the project database"
    transient = True


class PostgresNotConfigured(SubscribeError):
    """The server runs without a database (``REALTIME_DATABASE_URL`` unset)."""

    message = (
        "Unable to subscribe to changes with given parameters. "
        "PostgreSQL is not configured (set REALTIME_DATABASE_URL)"
    )


# --- transport: REST answers, gate fallbacks, closes and notices -------------------------
# (the transport's section; the REST body shapes are protocol.md §1.8's)


class RestError(PeerError):
    """A refused REST broadcast (``/api/broadcast``…): ``http_status`` with ``{"message": …}``."""

    code = ""
    where: ClassVar[Places] = (REST,)


class RestUnauthorized(RestError):
    """No usable token: neither ``Authorization: Bearer`` nor ``apikey`` verifies."""

    message = "Unauthorized"
    http_status = 401


class RestForbidden(RestError):
    """A single-message broadcast to a private topic whose write policy does not admit the
    caller (a batch drops such messages silently instead)."""

    message = "Unauthorized"
    http_status = 403


class RestInvalidJson(RestError):
    """The body is not JSON although it says it is."""

    message = "Request body is not valid JSON"
    http_status = 400


class RestJsonTooDeep(RestInvalidJson):
    """The body nests objects and arrays deeper than the server accepts (128 levels)."""

    message = "Request body nests JSON more than 128 levels deep"


class RestRateLimited(RestError):
    """The tenant's events per second are exceeded (``REALTIME_MAX_EVENTS_PER_SECOND``)."""

    message = "You have exceeded your rate limit"
    http_status = 429


class RestBatchTooLarge(RestError):
    """A batch has more messages than the tenant's remaining events this second."""

    message = "Too many messages to broadcast, please reduce the batch size"
    http_status = 429


class RestAuthorizationFailed(RestError):
    """The database could not evaluate the write policy of a private single-message broadcast."""

    message = "Unable to authorize broadcast"
    http_status = 500


class RestUnsupportedMedia(RestError):
    """A single-message broadcast whose ``Content-Type`` is neither JSON nor octet-stream;
    the body is ``{"error": …}``, not ``{"message": …}``."""

    message = "Unsupported Media Type. Use application/json or application/octet-stream"
    http_status = 415


class RestFieldError:
    """Per-field validation texts of a 422 answer (``{"errors": {field: [text]}}``)."""

    BLANK = "can't be blank"
    INVALID = "is invalid"
    TOO_BIG = "Payload size exceeds tenant limit"


class JoinDenied(PeerError):
    """An ``authorize_join`` gate denied a join and no reason came back with the verdict."""

    code = ""
    message = "Unauthorized: join denied"
    where: ClassVar[Places] = (JOIN_REPLY,)


class SendDenied(PeerError):
    """An ``authorize_send`` gate denied a broadcast and no reason came back with the verdict."""

    code = ""
    message = "Unauthorized: send denied"
    where: ClassVar[Places] = (PUSH_REPLY,)


class IdleTimeout(PeerError):
    """Nothing arrived on the socket for ``REALTIME_IDLE_TIMEOUT_MS`` (clients send a heartbeat
    every 25 s)."""

    code = ""
    message = "idle timeout"
    where: ClassVar[Places] = (CLOSE,)
    close_code = 1000
    close_reason = "idle timeout"


class SlowConsumer(PeerError):
    """The socket's unsent bytes passed ``REALTIME_OUTBOX_MAX_BYTES``: the client reads too
    slowly to keep up, and is dropped instead of slowing everyone else."""

    code = ""
    message = "slow consumer"
    where: ClassVar[Places] = (CLOSE,)
    close_code = 1008
    close_reason = "slow consumer"


class ServerRestart(PeerError):
    """The server is shutting down (drain): every joined channel is first told
    ``Server requested disconnect`` in a ``system`` message, then the socket is closed."""

    code = ""
    message = "server restart"
    where: ClassVar[Places] = (CLOSE,)
    close_code = 1012
    close_reason = "server restart"


class Notice:
    """Texts of ``system`` messages with status ``ok``."""

    REPLICATION_READY = "Replication connection established"
    DISCONNECT = "Server requested disconnect"
