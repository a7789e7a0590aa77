"""Broadcast offsets and their retention (pure: no I/O; time is an argument).

Every broadcast a backbone carries gets a dense offset 1, 2, 3 … in its stream's *epoch*.  An
epoch starts whenever retention for the stream starts from nothing — the first message of a
stream, or the first one after the stream's state expired — so ``(epoch, offset)`` names one
message for as long as it is retained (protocol.md §4.10).

:class:`Retention` is the in-memory store (the memory backbone's, and a Redis node's while Redis
is away).  Memory stays bounded three ways: per stream at most ``max_messages`` entries, none
older than ``window_s`` (trimmed whenever the stream is used), and all streams together at most ``max_bytes`` of message data (the
least recently published-to stream gives up its oldest entries first).  A stream nobody
published to or asked about for ``window_s`` is forgotten entirely, its epoch with it.

:func:`plan` is the gap arithmetic every backbone shares: given what a stream retains and where
a client stopped, which entries to replay and how many messages are lost.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def new_epoch(prefix: str = "") -> str:
    """A fresh epoch name: 12 hex digits (``prefix`` marks node-local epochs)."""
    return prefix + os.urandom(6).hex()


@dataclass(frozen=True, slots=True)
class RetentionLimits:
    """``window_s == 0`` turns offsets and resume off."""

    window_s: float = 120.0
    max_messages: int = 1000
    max_bytes: int = 64 * 1024 * 1024

    @property
    def enabled(self) -> bool:
        return self.window_s > 0


@dataclass(frozen=True, slots=True)
class History(Generic[T]):
    """What a stream retains after ``after``: its current epoch, the last offset it assigned
    (``head``), the oldest one it still holds (``first``; ``head + 1`` when it holds none) and
    the entries to replay, oldest first."""

    epoch: str
    head: int
    first: int
    entries: tuple[tuple[int, T], ...]


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages a resuming client can no longer get: ``missed`` of them (``None``: unknown,
    the epoch changed); ``next`` is the first offset it is given after the gap."""

    missed: int | None
    epoch: str
    next: int


def plan(epoch: str, head: int, first: int, after: int, asked_epoch: str) -> tuple[int, Gap | None]:
    """Where replay starts (the first offset to send) and the gap before it, if any.

    Same epoch: everything retained after ``after``; a gap when ``after + 1`` is older than the
    oldest retained entry.  Another epoch: everything retained, after an unknown gap."""
    if asked_epoch != epoch:
        return first, Gap(None, epoch, first)
    start = after + 1
    if start >= first or start > head:
        return max(start, first), None
    return first, Gap(first - start, epoch, first)


class _Stream(Generic[T]):
    __slots__ = ("entries", "epoch", "head", "size", "touched")

    def __init__(self, epoch: str, now: float) -> None:
        self.epoch = epoch
        self.head = 0
        self.entries: deque[tuple[int, float, int, T]] = deque()  # offset, time, bytes, item
        self.size = 0
        self.touched = now


class Retention(Generic[T]):
    """Offsets and retained entries of many streams, within :class:`RetentionLimits`."""

    def __init__(self, limits: RetentionLimits, epoch_prefix: str = "") -> None:
        self.limits = limits
        self.epoch_prefix = epoch_prefix
        self.total_bytes = 0
        #: least recently published-to (or read) first
        self._streams: OrderedDict[str, _Stream[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def _stream(self, stream: str, now: float) -> _Stream[T]:
        self.expire(now)
        s = self._streams.get(stream)
        if s is None:
            s = self._streams[stream] = _Stream(new_epoch(self.epoch_prefix), now)
        else:
            self._streams.move_to_end(stream)
            cutoff = now - self.limits.window_s
            while s.entries and s.entries[0][1] < cutoff:
                self._drop_oldest(s)
        s.touched = now
        return s

    def append(self, stream: str, item: T, size: int, now: float) -> tuple[int, str]:
        """Assign ``item`` the stream's next offset and retain it; returns ``(offset, epoch)``."""
        s = self._stream(stream, now)
        s.head += 1
        s.entries.append((s.head, now, size, item))
        s.size += size
        self.total_bytes += size
        while len(s.entries) > self.limits.max_messages:
            self._drop_oldest(s)
        while self.total_bytes > self.limits.max_bytes and self._streams:
            victim = next(iter(self._streams.values()))
            if not victim.entries:
                break
            self._drop_oldest(victim)
        return s.head, s.epoch

    def history(self, stream: str, after: int, asked_epoch: str, now: float) -> tuple[History[T], Gap | None]:
        """Retained entries to replay for a client that stopped at ``(asked_epoch, after)``.

        Asking creates the stream's epoch if it has none, so a gap message can name it and the
        next message continues it."""
        s = self._stream(stream, now)
        first = s.entries[0][0] if s.entries else s.head + 1
        start, gap = plan(s.epoch, s.head, first, after, asked_epoch)
        entries = tuple((off, item) for off, _t, _n, item in s.entries if off >= start)
        return History(s.epoch, s.head, first, entries), gap

    def expire(self, now: float) -> None:
        """Forget streams idle for the window (the least recently used come first, so this
        stops at the first one still in use).  A stream's own entries older than the window are
        dropped whenever it is used (``_stream``)."""
        cutoff = now - self.limits.window_s
        while self._streams:
            name, s = next(iter(self._streams.items()))
            if s.touched >= cutoff:
                break
            self.total_bytes -= s.size
            del self._streams[name]

    def _drop_oldest(self, s: _Stream[T]) -> None:
        _off, _t, size, _item = s.entries.popleft()
        s.size -= size
        self.total_bytes -= size
