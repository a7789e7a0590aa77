"""Helpers for the cluster tests: a cluster of server processes on one private ``redis-server``
(the conditions polled with a deadline, ``wait_until``/``wait_async``, come from ``support``
and are re-exported here).  A plain module (``from clusterkit import ...``); the
fixtures built on it live in this directory's ``conftest.py``, which puts it on ``sys.path``.

Each server process is one node (its own random node id); nodes only share the Redis URL.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from support import RedisServer, ServerProc, start_server, wait_async, wait_until

__all__ = ["CONVERGE_S", "Cluster", "assert_no_traceback", "health", "wait_async", "wait_nodes_sync", "wait_until"]

#: what a node needs to see every other node: one heartbeat period (2 s) plus slack
CONVERGE_S = 8.0


def health(node: ServerProc) -> dict[str, Any]:
    with urllib.request.urlopen(f"{node.http_url}/health", timeout=2) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


def assert_no_traceback(node: ServerProc) -> None:
    log = node.log()
    assert "Traceback" not in log, f"node on port {node.port} logged a traceback:\n{log[-4000:]}"


def wait_nodes_sync(nodes: list[ServerProc], count: int, timeout: float = CONVERGE_S) -> None:
    """Block until every node's /health counts ``count`` nodes with the backbone connected."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = [health(n) for n in nodes]
        except OSError:
            seen = []
        if seen and all(h["nodes"] == count and h["pubsub"] == "connected" for h in seen):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"nodes did not converge on {count}: {seen}")
        time.sleep(0.05)  # poll interval of a condition bounded by the deadline


@dataclass
class Cluster:
    redis: RedisServer
    tmp: str
    nodes: list[ServerProc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def add_node(self, **env: str) -> ServerProc:
        node = start_server(self.tmp, REALTIME_REDIS_URL=self.redis.url, **{**self.env, **env})
        self.nodes.append(node)
        return node

    def kill_node(self, node: ServerProc) -> None:
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
