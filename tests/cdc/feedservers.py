"""Servers of a test's own on the module's ``cdc`` database (tests/cdc/conftest.py): each
streams from a replication slot of its own, dropped when the test ends.  A plain module (test
modules of tests/cdc import it by name)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from support import ServerProc, start_server


@contextmanager
def own_slot(cdc: Any, name: str) -> Iterator[dict[str, str]]:
    """The environment of servers on ``cdc``'s database and publication with the slot
    ``<module slot>_<name>``; the slot is dropped at the end (after the servers stopped)."""
    slot = f"{cdc.slot[:44]}_{name}"[:63]
    try:
        yield {"REALTIME_DATABASE_URL": cdc.dsn, "REALTIME_PUBLICATION": cdc.publication, "REALTIME_SLOT_NAME": slot}
    finally:
        with psycopg.connect(cdc.dsn, autocommit=True) as conn:
            conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
                         (slot,))


@contextmanager
def feed_server(cdc: Any, tmp_path: Any, name: str, **env: str) -> Iterator[ServerProc]:
    """One server on a slot of its own (``own_slot``), with extra ``REALTIME_*`` settings."""
    with own_slot(cdc, name) as base:
        (tmp_path / name).mkdir()
        server = start_server(str(tmp_path / name), **base, **env)
        try:
            yield server
        finally:
            server.stop()
