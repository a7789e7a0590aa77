"""Cluster fixtures: a real ``redis-server`` on a free port and server processes on it.

``cluster`` is a module-scoped trio on one Redis, shared by tests that isolate themselves with
unique topics; tests that kill a node or Redis build their own with ``make_cluster``.
Every node's log is checked for a Python traceback when its cluster is torn down.
The helpers (``Cluster``, ``health``, ``wait_until``…) live in ``clusterkit.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

HERE = os.path.dirname(__file__)
for path in (HERE, os.path.join(HERE, "..", "integration"), os.path.join(HERE, "..", "conformance")):
    if path not in sys.path:  # clusterkit; rawclient, peers (plain modules)
        sys.path.insert(0, path)

from clusterkit import Cluster, assert_no_traceback, wait_nodes_sync  # noqa: E402
from support import RedisServer  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes on one Redis, converged (each sees the other two)."""
    redis = RedisServer()
    redis.start()
    c = Cluster(redis, str(tmp_path_factory.mktemp("cluster")))
    try:
        for _ in range(3):
            c.add_node()
        wait_nodes_sync(c.nodes, 3)
        yield c
        for node in c.nodes:
            assert_no_traceback(node)
    finally:
        c.stop()
        redis.cleanup()


@pytest.fixture
def make_cluster(tmp_path: Any) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(n, **env)``: a private Redis and ``n`` nodes with extra ``REALTIME_*`` env."""
    made: list[Cluster] = []

    def make(n: int, **env: str) -> Cluster:
        redis = RedisServer()
        redis.start()
        c = Cluster(redis, str(tmp_path), env=dict(env))
        made.append(c)
        for _ in range(n):
            c.add_node()
        if n:
            wait_nodes_sync(c.nodes, n)
        return c

    yield make
    for c in made:
        c.stop()
        c.redis.cleanup()
