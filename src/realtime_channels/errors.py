"""One rooted error tree.  Every error carries its Supabase code (protocol.md §3.5) and the
text the peer sees; exception text of unexpected failures never goes over the wire.

``PeerError`` is the peer's mistake (bad token, limit hit); ``InternalError`` is ours.
"""

from __future__ import annotations


class RealtimeError(Exception):
    """Root of the tree. ``code`` is the Supabase error code, ``message`` the human text."""

    code: str = "UnknownErrorOnChannel"
    message: str = "Unknown Error on Channel"
    #: HTTP status used when this error refuses a WebSocket upgrade (protocol.md §1.4).
    http_status: int = 500
    #: ``error`` body of a refused upgrade; ``None`` means "Error connecting to Realtime".
    handshake_message: str | None = None

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)

    @property
    def reason(self) -> str:
        """The ``<Code>: <message>`` join-error reason of protocol.md §3.5."""
        return f"{self.code}: {self.message}"

    @property
    def handshake_error(self) -> str:
        return self.handshake_message if self.handshake_message is not None else self.message


class PeerError(RealtimeError):
    """The client did something the protocol refuses."""


class InternalError(RealtimeError):
    """We failed; the peer only ever sees the generic text."""

    http_status = 500
    handshake_message = "Error connecting to Realtime"

    @property
    def reason(self) -> str:  # §3.5: "Unknown Error on Channel" has no code prefix
        return "Unknown Error on Channel"


# --- JWT (protocol.md §7.1, §1.4, §3.5) -------------------------------------------------


class AuthError(PeerError):
    code = "InvalidJWTToken"
    http_status = 401


class TokenExpired(AuthError):
    code = "InvalidJWTToken"

    def __init__(self, seconds_ago: int) -> None:
        self.seconds_ago = seconds_ago
        super().__init__(f"Token has expired {seconds_ago} seconds ago")
        self.handshake_message = "Token has expired"


class MissingClaims(AuthError):
    code = "InvalidJWTToken"
    message = "Fields `role` and `exp` are required in JWT"


class InvalidExpiration(AuthError):
    code = "InvalidJWTToken"
    message = "Token expiration time is invalid"


class MalformedJWT(AuthError):
    code = "MalformedJWT"
    message = "The token provided is not a valid JWT"


class JwtSignatureError(AuthError):
    code = "JwtSignatureError"
    message = "Failed to validate JWT signature"


class JwtSignerError(AuthError):
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
    """Header or claims not a JSON object: a generic failure (§7.1 step 2)."""

    code = "UnknownErrorOnChannel"
    message = "Unknown Error on Channel"
    http_status = 500
    handshake_message = "Error connecting to Realtime"

    @property
    def reason(self) -> str:
        return "Unknown Error on Channel"


class ApiKeyMissing(AuthError):
    message = "API key is missing"


# --- channel / join errors (protocol.md §3.5, §8) ---------------------------------------


class TopicNameRequired(PeerError):
    code = "TopicNameRequired"
    message = "You must provide a topic name"


class ConnectionRateLimitReached(PeerError):
    code = "ConnectionRateLimitReached"
    message = "Too many connected users"
    http_status = 429


class ClientJoinRateLimitReached(PeerError):
    code = "ClientJoinRateLimitReached"
    message = "Too many joins per second"
    http_status = 429


class ChannelRateLimitReached(PeerError):
    code = "ChannelRateLimitReached"
    message = "Too many channels"


class PrivateOnly(PeerError):
    code = "PrivateOnly"
    message = "This project only allows private channels"


class Unauthorized(PeerError):
    code = "Unauthorized"

    def __init__(self, sub_topic: str) -> None:
        super().__init__(f"You do not have permissions to read from this Channel topic: {sub_topic}")


class UnableToReplayMessages(PeerError):
    code = "UnableToReplayMessages"


class RealtimeRestarting(PeerError):
    code = "RealtimeRestarting"
    message = "Realtime is restarting, please standby"


class UnableToConnectToProject(PeerError):
    code = "UnableToConnectToProject"
    message = "Realtime was unable to connect to the project database"


# --- configuration ----------------------------------------------------------------------


class ConfigError(RealtimeError):
    """Bad configuration: refuse to start with a clear message."""

    code = "ConfigError"


# --- transport: REST answers, function gates, close reasons ------------------------------
# (appended by the transport restructure; the REST body shapes are protocol.md §1.8's)


class RestError(PeerError):
    """A REST broadcast refused: ``http_status`` and the ``{"message": …}`` body."""

    code = "RestError"


class RestUnauthorized(RestError):
    message = "Unauthorized"
    http_status = 401


class RestForbidden(RestError):
    message = "Unauthorized"
    http_status = 403


class RestInvalidJson(RestError):
    message = "Request body is not valid JSON"
    http_status = 400


class RestRateLimited(RestError):
    message = "You have exceeded your rate limit"
    http_status = 429


class RestBatchTooLarge(RestError):
    message = "Too many messages to broadcast, please reduce the batch size"
    http_status = 429


class RestAuthorizationFailed(RestError):
    message = "Unable to authorize broadcast"
    http_status = 500


class RestUnsupportedMedia(RestError):
    """415: the body is ``{"error": …}``, not ``{"message": …}``."""

    message = "Unsupported Media Type. Use application/json or application/octet-stream"
    http_status = 415


class RestFieldError:
    """Per-field validation texts of a 422 answer (``{"errors": {field: [text]}}``)."""

    BLANK = "can't be blank"
    INVALID = "is invalid"
    TOO_BIG = "Payload size exceeds tenant limit"


class JoinDenied(PeerError):
    """An ``authorize_join`` gate said no without a reason of its own."""

    message = "Unauthorized: join denied"


class SendDenied(PeerError):
    """An ``authorize_send`` gate said no without a reason of its own."""

    message = "Unauthorized: send denied"


class PostgresNotConfigured(PeerError):
    """A postgres_changes join on a server without a database (a ``system`` error, §6.3)."""

    message = ("Unable to subscribe to changes with given parameters. "
               "PostgreSQL is not configured (set REALTIME_DATABASE_URL)")


class ReplicationNotReady(PeerError):
    """§3.7 ``replication_ready``: the database stream did not come up in time."""

    message = "Replication connection was not established in time"


class Notice:
    """Texts of ``system`` messages with status ``ok``."""

    REPLICATION_READY = "Replication connection established"


class CloseReason:
    """Reasons of the close frames the server sends."""

    IDLE = "idle timeout"
    SLOW_CONSUMER = "slow consumer"
    RESTART = "server restart"
    DISCONNECT_NOTICE = "Server requested disconnect"
