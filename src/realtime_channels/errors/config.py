"""Configuration errors: the server refuses to start."""

from __future__ import annotations

from typing import ClassVar

from .base import *  # noqa: F403
from .auth import *  # noqa: F403
from .channel import *  # noqa: F403


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

__all__ = ["ConfigError", "DevSecretExposed"]
