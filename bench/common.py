"""Helpers shared by the benchmark scripts (they run as ``python bench/<script>.py``)."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: int | None, cmd: list[str]) -> list[str]:
    """``cmd`` run on one CPU core with ``taskset`` (unpinned when ``core`` is None)."""
    return cmd if core is None else ["taskset", "-c", str(core), *cmd]


def log(msg: str) -> None:
    """A progress line, flushed at once (benchmarks run for minutes)."""
    print(msg, flush=True)


def load_pgcluster() -> Any:
    """``tests/pgcluster.py`` (the throwaway PostgreSQL cluster), loaded as a module."""
    spec = importlib.util.spec_from_file_location("pgcluster", ROOT / "tests" / "pgcluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
