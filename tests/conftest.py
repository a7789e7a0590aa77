"""Fixtures shared by every test directory; the helpers live in ``support.py``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (support, pgcluster) importable

from support import ServerProc, start_server  # noqa: E402


@pytest.fixture
def spans() -> Iterator[Any]:
    """Spans of the code run in this process, in OpenTelemetry's in-memory exporter (tracing
    enabled for the test, disabled after)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from realtime_channels import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()
    provider.shutdown()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One shared server on embedded defaults (test secret, no join-error back-off)."""
    srv = start_server(str(tmp_path_factory.mktemp("server")))
    yield srv
    srv.stop()


@pytest.fixture
def server_factory(tmp_path: Any) -> Iterator[Any]:
    """Start servers with custom ``REALTIME_*`` settings; stopped at test end."""
    started: list[ServerProc] = []

    def factory(**env: str) -> ServerProc:
        srv = start_server(str(tmp_path), **env)
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A private PostgreSQL cluster (wal_level=logical, free port) shared by the session."""
    from pgcluster import PgCluster

    cluster = PgCluster()
    cluster.init()
    cluster.start()
    yield cluster
    cluster.destroy()
