"""Fixtures for the broadcast resume tests: servers with small retention, a TCP proxy that can
cut subscribers off, Redis-backed clusters.  ``rawclient`` (tests/integration), ``clusterkit``
(tests/cluster) and ``tcpproxy`` (here) are plain modules put on ``sys.path``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

HERE = os.path.dirname(__file__)
for path in (HERE, os.path.join(HERE, "..", "integration"), os.path.join(HERE, "..", "cluster")):
    if path not in sys.path:
        sys.path.insert(0, path)

from clusterkit import Cluster, assert_no_traceback, wait_nodes_sync  # noqa: E402
from support import RedisServer  # noqa: E402


@pytest.fixture
def make_cluster(tmp_path: Any) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(n, **env)``: a private Redis and ``n`` converged nodes."""
    made: list[Cluster] = []

    def make(n: int, **env: str) -> Cluster:
        redis = RedisServer()
        redis.start()
        c = Cluster(redis, str(tmp_path), env=dict(env))
        made.append(c)
        for _ in range(n):
            c.add_node()
        wait_nodes_sync(c.nodes, n)
        return c

    yield make
    for c in made:
        try:
            for node in c.nodes:
                assert_no_traceback(node)
        finally:
            c.stop()
            c.redis.cleanup()
