"""Message tracing for ``GET /api/trace`` (docs/explain.md): who each message on a topic was
written to, who was skipped and why.

Watchers register per sub-topic; the hot paths ask ``active`` first (an empty dict when nobody
traces: no topic is even sliced), then ``watching(sub_topic)``, and only then work out the details.  Events
carry socket ids, event names and sizes, never a payload.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["TraceBus", "Watcher"]

Watcher = Callable[[dict[str, Any]], None]


class TraceBus:
    def __init__(self) -> None:
        self._watchers: dict[str, set[Watcher]] = {}

    def watch(self, sub_topic: str, watcher: Watcher) -> None:
        self._watchers.setdefault(sub_topic, set()).add(watcher)

    def unwatch(self, sub_topic: str, watcher: Watcher) -> None:
        watchers = self._watchers.get(sub_topic)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[sub_topic]

    @property
    def active(self) -> bool:
        return bool(self._watchers)

    def watching(self, sub_topic: str) -> bool:
        return sub_topic in self._watchers

    def emit(self, sub_topic: str, event: dict[str, Any]) -> None:
        for watcher in tuple(self._watchers.get(sub_topic, ())):
            try:
                watcher({"topic": sub_topic, **event})
            except Exception:  # a broken watcher must not break delivery
                log.exception("trace watcher failed")
