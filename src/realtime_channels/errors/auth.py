"""JWT and API-key errors."""

from __future__ import annotations

from typing import ClassVar

from .base import *  # noqa: F403


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

__all__ = ["AuthError", "TokenExpired", "MissingClaims", "MalformedJWT", "TokenTooLarge", "JwtSignatureError", "JwtSignerError", "InvalidTokenStructure", "ApiKeyMissing"]
