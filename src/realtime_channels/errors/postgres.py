"""postgres_changes subscription errors."""

from __future__ import annotations

from typing import ClassVar

from .base import *  # noqa: F403
from .auth import *  # noqa: F403
from .channel import *  # noqa: F403
from .config import *  # noqa: F403


# --- postgres_changes (protocol.md §6.3) ------------------------------------------------
# The ``message`` of a postgres_changes ``system`` reply with ``status: "error"``: Supabase's
# texts, and no code on the wire.  The channel stays joined (only its database subscription
# failed); each failure is also logged at warning with the same text.



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


# --- waiting for the subscriptions in the join (protocol.md §3.11) -----------------------
# ``config.postgres_changes_options.wait``: the join reply comes once the bindings are live,
# or is one of these errors; nothing of the join is kept.


class SnapshotTooLarge(SubscribeError):
    """The channel's ``snapshot: true`` bindings match more than ``REALTIME_SNAPSHOT_MAX_ROWS``
    rows (protocol.md §6.10).  No row is sent; the subscription is live."""

    message = "SnapshotTooLarge: more than <n> rows match; narrow the binding's filter (changes are sent from now on)"

    def __init__(self, max_rows: int) -> None:
        super().__init__(f"SnapshotTooLarge: more than {max_rows} rows match; narrow the binding's filter "
                         "(changes are sent from now on)")


class SnapshotFailed(SubscribeError):
    """The database failed while the snapshot was read (the cause goes to the server log).  The
    subscription is live."""

    message = "SnapshotFailed: the snapshot could not be read (changes are sent from now on)"


class PostgresChangesSubscribeTimeout(JoinError):
    """A join with ``postgres_changes_options.wait`` whose bindings did not become live within
    its ``timeout`` (default 15000 ms, at most 20000 ms) — typically because the database's
    change feed is not streaming."""

    code = "PostgresChangesSubscribeTimeout"
    message = "Timed out after <timeout>ms waiting for the postgres_changes subscription"

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        super().__init__(f"Timed out after {timeout_ms}ms waiting for the postgres_changes subscription")


class RealtimeDisabledForConfiguration(JoinError):
    """A join with ``postgres_changes_options.wait`` whose bindings were refused for good; the
    reason is the text the ``postgres_changes`` system error would carry without ``wait``
    (table not published, bad filter, no ``role`` claim, no database…)."""

    code = "RealtimeDisabledForConfiguration"
    message = "<reason>"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


__all__ = ["PostgresChangesSubscribeTimeout", "RealtimeDisabledForConfiguration", "SubscribeError", "FilterError", "SubscriptionParamsMissing", "SelectParamsInvalid", "SelectOnWildcard", "UnknownEvent", "NoRoleClaim", "TableNotPublished", "SubscriptionRejected", "ChangesUnavailable", "PostgresNotConfigured", "SnapshotTooLarge", "SnapshotFailed"]
