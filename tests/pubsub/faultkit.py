"""What the backbone fault tests share: a node that records what its backend delivers and
which states it went through, and the end-of-test check that nothing escaped."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from typing import Any

import pytest

from realtime_channels.protocol.codec import Broadcast
from realtime_channels.pubsub import Envelope

OnState = Callable[[str], None]


class Node:
    """One node: ``backend(on_state)`` builds its PubSub (a RedisPubSub, a RedisClusterPubSub)."""

    def __init__(self, name: str, backend: Callable[[OnState], Any], timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        self.states: list[str] = []
        self.received: list[Envelope] = []
        self.changed = asyncio.Event()
        self.pubsub = backend(self._on_state)

    def _on_state(self, state: str) -> None:
        self.states.append(state)
        self.changed.set()

    def deliver(self, env: Envelope) -> None:
        self.received.append(env)
        self.changed.set()

    def seq(self, stream: str, origin: str) -> list[int]:
        return [e.broadcast.payload["i"] for e in self.received
                if e.stream == stream and e.origin == origin and e.broadcast is not None]

    def publish(self, stream: str, i: int) -> None:
        self.pubsub.publish(Envelope(stream, self.name, broadcast=Broadcast("realtime:t", payload={"i": i})))

    async def wait_until(self, cond: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        while not cond():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: timed out waiting for {what} (states={self.states})")
            self.changed.clear()
            if cond():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def wait_state(self, state: str) -> None:
        await self.wait_until(lambda: self.pubsub.state == state, f"state {state}")


def assert_clean(errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    gc.collect()  # surfaces "Task exception was never retrieved"
    assert errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
