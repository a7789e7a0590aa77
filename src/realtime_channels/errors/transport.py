"""REST answers, gate fallbacks, closes and notices."""

from __future__ import annotations

from typing import ClassVar

from .base import *  # noqa: F403
from .auth import *  # noqa: F403
from .channel import *  # noqa: F403
from .config import *  # noqa: F403
from .postgres import *  # noqa: F403


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


class RestBodyUnreadable(RestError):
    """The body cannot be read: its ``Content-Encoding`` (gzip, deflate) does not decode it, or
    the peer stopped sending it before its end."""

    message = "Request body could not be read"
    http_status = 400


class RestBodyTooLarge(RestError):
    """The body, decoded, is larger than the server reads (``REALTIME_MAX_FRAME_BYTES``)."""

    message = "Request body is too large"
    http_status = 413


class RestBodyTimeout(RestError):
    """The body has not arrived ``REALTIME_HANDSHAKE_TIMEOUT_MS`` after the request's headers (a
    ``Content-Length`` larger than what is sent, a stalled upload)."""

    message = "Request body did not arrive in time"
    http_status = 408


class AdminTenantNotFound(RestError):
    """The admin API (``/api/tenants/{external_id}…``) names no tenant: with tenants in a
    database, none of that id; otherwise, any id but ``REALTIME_SELF_HOST_TENANT_NAME``."""

    message = "not found"
    http_status = 404


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

class TenantNotFound(PeerError):
    """Tenants live in the database (``REALTIME_TENANTS_DATABASE_URL``) and none has the
    external id the request's Host names: the upgrade is refused with 404."""

    code = "TenantNotFound"
    message = "Tenant not found"
    http_status = 404
    where: ClassVar[Places] = (HANDSHAKE,)

    def __init__(self, external_id: str | None = None) -> None:
        super().__init__()
        self.external_id = external_id


class TenantSuspended(PeerError):
    """The tenant is suspended (``suspend: true``): upgrades are refused with 403."""

    code = "RealtimeDisabledForTenant"
    message = "Realtime was disabled for this tenant"
    http_status = 403
    where: ClassVar[Places] = (HANDSHAKE,)


class RestTenantNotFound(RestError):
    """A REST call whose Host names no tenant of the database."""

    message = "Tenant not found in database"
    http_status = 401


__all__ = ["TenantNotFound", "TenantSuspended", "RestTenantNotFound", "AdminTenantNotFound", "RestError", "RestUnauthorized", "RestForbidden", "RestInvalidJson", "RestJsonTooDeep", "RestBodyUnreadable", "RestBodyTooLarge", "RestBodyTimeout", "RestRateLimited", "RestBatchTooLarge", "RestAuthorizationFailed", "RestUnsupportedMedia", "RestFieldError", "JoinDenied", "SendDenied", "IdleTimeout", "SlowConsumer", "ServerRestart", "Notice"]
