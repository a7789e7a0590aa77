"""The root of the error tree and the places an error can appear (see the package docstring)."""

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

#: ``{"extension": "postgres_changes", "status": "error", "message": …, "channel": <sub-topic>}``
POSTGRES_CHANGES = "postgres_changes system message"

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
    def rest_message(self) -> str:
        """The ``message`` of a refused REST call carrying this error."""
        return self.message

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

__all__ = ["JOIN_REPLY", "PUSH_REPLY", "SYSTEM", "CLOSE", "HANDSHAKE", "REST", "LOG", "POSTGRES_CHANGES", "Places", "RealtimeError", "PeerError", "InternalError"]
