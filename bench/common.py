"""Helpers shared by the benchmark scripts (they run as ``python bench/<script>.py``)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: int | None, cmd: list[str]) -> list[str]:
    """``cmd`` run on one CPU core with ``taskset`` (unpinned when ``core`` is None)."""
    return cmd if core is None else ["taskset", "-c", str(core), *cmd]
