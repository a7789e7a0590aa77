"""One rooted error tree: every error a client or a REST caller can see is a class of this package, with its
Supabase code (protocol.md §3.5) and the text the peer sees.  Exception text of unexpected
failures never goes over the wire.

``PeerError`` is the peer's mistake (bad token, limit hit); ``InternalError`` is ours.

Each class that reaches a peer names *where* it appears (``where``, a tuple of the constants
below) and explains itself in its docstring; ``scripts/gen_error_codes.py`` builds
``docs/error-codes.md`` from them.  A class whose text carries a value shows it as ``<name>`` in
its class-level ``message``; the instance fills it in.
"""


from __future__ import annotations

from .base import *  # noqa: F403
from .auth import *  # noqa: F403
from .channel import *  # noqa: F403
from .config import *  # noqa: F403
from .postgres import *  # noqa: F403
from .transport import *  # noqa: F403

# the modules, in the order their classes are listed on docs/error-codes.md
MODULES = ("base", "auth", "channel", "config", "postgres", "transport")
