"""A real, private ``redis-server`` for the PubSub tests (no mocks of the network boundary).

``redis_server`` (session scope) is shared by the conformance suite, whose tests isolate
themselves with key prefixes.  Fault tests kill and restart their server, so they get their own
through ``redis_factory``.  Likewise ``redis_cluster``: a Redis Cluster (3 masters, 3 replicas,
tests/rediscluster.py) started once for the conformance suite; the cluster fault tests start
their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from rediscluster import RedisCluster, running_cluster
from support import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def redis_factory() -> Iterator[type[RedisServer]]:
    """Hands out private servers (``RedisServer()``) and stops them after the test."""
    made: list[RedisServer] = []

    class _Tracked(RedisServer):
        def __init__(self, port: int | None = None) -> None:
            super().__init__(port)
            made.append(self)

    try:
        yield _Tracked
    finally:
        for server in made:
            server.cleanup()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Everything the event loop reports as unhandled (e.g. a task dying with an exception)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)
