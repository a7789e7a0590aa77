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


# --- postgres_changes (protocol.md §6.3) ------------------------------------------------
# The ``message`` of a ``system`` reply with ``status: "error"``; Supabase's texts.


class SubscribeError(PeerError):
    """A postgres_changes binding the server cannot serve; ``message`` is the client's text.

    ``transient`` errors are retried every few seconds (§6.3); the others are final."""

    code = "UnableToSubscribeToPostgres"
    transient = False


class FilterError(SubscribeError, ValueError):
    """A filter the client must fix (§6.2).  ``str(err)`` is the exact client-facing text."""

    code = "InvalidFilter"


class SubscriptionParamsMissing(SubscribeError):
    def __init__(self, params_text: str) -> None:
        super().__init__(
            "No subscription params provided. Please provide at least a `schema` or `table` to "
            f"subscribe to: {params_text}"
        )


class SelectParamsInvalid(SubscribeError):
    message = (
        'Error parsing `select` params: expected a list of column name strings, e.g. select: ["col1", "col2"]'
    )


class SelectOnWildcard(SubscribeError):
    message = (
        "Column selection is not supported for wildcard subscriptions. "
        "Provide an explicit schema and table name."
    )


class UnknownEvent(SubscribeError):
    """Supabase reads an unknown ``event`` as ``*``; we refuse it so a typo is not a firehose."""

    def __init__(self, event: str) -> None:
        self.event = event
        super().__init__(
            f"Unable to subscribe to changes with given parameters. Unknown event {event!r}: "
            'expected "INSERT", "UPDATE", "DELETE" or "*"'
        )


class NoRoleClaim(SubscribeError):
    message = "Unable to subscribe to changes with given parameters. The token has no role claim"


class TableNotPublished(SubscribeError):
    def __init__(self, params: str) -> None:
        super().__init__(
            "Unable to subscribe to changes with given parameters. Please check Realtime is "
            f"enabled for the given connect parameters: {params}"
        )


class SubscriptionRejected(SubscribeError):
    """The database side refused the binding (bad column, bad cast, unknown role…)."""

    def __init__(self, params: str, detail: str) -> None:
        self.detail = detail
        super().__init__(
            "Unable to subscribe to changes with given parameters. An exception happened so please "
            f"check your connect parameters: {params}. Exception: {detail}"
        )


class ChangesUnavailable(SubscribeError):
    """The replication stream or the database is not reachable right now (retried)."""

    code = "UnableToConnectToProject"
    message = "Realtime was unable to connect to the project database"
    transient = True


class PostgresNotConfigured(SubscribeError):
    message = (
        "Unable to subscribe to changes with given parameters. "
        "PostgreSQL is not configured (set REALTIME_DATABASE_URL)"
    )
