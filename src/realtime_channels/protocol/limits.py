"""Rate-limit primitives with an injected clock (protocol.md §5.7, §8).

Sans-I/O: every method takes ``now`` in seconds from a monotonic clock the caller owns.
A clock that steps backwards is treated as standing still, never as a new window.
"""

from __future__ import annotations

from collections import deque

__all__ = ["FixedWindow", "RollingRate", "TokenBucket"]


class FixedWindow:
    """At most ``limit`` events per fixed window of ``window`` seconds (§5.7: 5 per 30 s).

    A window opens at the first event after the previous one expired, so "the 6th push inside
    a window" (item 82) counts from the first push. Refused events are not counted: the
    caller shuts the channel down on the first refusal anyway (§8).
    """

    __slots__ = ("_limit", "_window", "_start", "_count")

    def __init__(self, limit: int, window: float) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        if window <= 0:
            raise ValueError("window must be > 0")
        self._limit = limit
        self._window = window
        self._start: float | None = None
        self._count = 0

    def opens_at(self, now: float) -> float:
        """When the next window opens (``now`` when no window is running)."""
        return now if self._start is None else self._start + self._window

    def hit(self, now: float) -> bool:
        """Record one event; ``False`` if it exceeds the limit of the current window."""
        if self._start is None or now - self._start >= self._window:
            self._start = now
            self._count = 0
        if self._count >= self._limit:
            return False
        self._count += 1
        return True


class RollingRate:
    """Events per second averaged over the last ``buckets * bucket_seconds`` seconds (§8:
    twelve 5-second buckets, one minute).

    Until a full minute has passed since the first event, the average is taken over the
    buckets elapsed so far (like the reference, whose rate counter averages the samples it
    has) so a burst right after start-up is not diluted by a minute of imagined silence.
    """

    __slots__ = ("_buckets", "_bucket_seconds", "_counts", "_first", "_sum", "total")

    def __init__(self, buckets: int = 12, bucket_seconds: float = 5.0) -> None:
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        if bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be > 0")
        self._buckets = buckets
        self._bucket_seconds = bucket_seconds
        # (bucket index, count), oldest first; only non-empty buckets are stored.
        self._counts: deque[list[int]] = deque()
        self._first: int | None = None
        #: the sum of ``_counts`` (rate() is asked for every inbound message)
        self._sum = 0
        #: every event ever added (the /metrics counters and the inspector read it)
        self.total = 0

    def add(self, now: float, n: int = 1) -> None:
        self.total += n
        self._sum += n
        idx = self._index(now)
        if self._first is None:
            self._first = idx
        if self._counts and self._counts[-1][0] == idx:
            self._counts[-1][1] += n
        else:
            self._counts.append([idx, n])
        self._expire(idx)

    def rate(self, now: float) -> float:
        idx = self._index(now)
        self._expire(idx)
        if self._first is None or not self._counts:
            return 0.0
        span = min(self._buckets, idx - self._first + 1)
        return self._sum / (span * self._bucket_seconds)

    def _index(self, now: float) -> int:
        idx = int(now // self._bucket_seconds)
        if self._counts and idx < self._counts[-1][0]:
            return int(self._counts[-1][0])  # clock stepped back: stay in the newest bucket
        return idx

    def _expire(self, idx: int) -> None:
        oldest = idx - self._buckets + 1
        while self._counts and self._counts[0][0] < oldest:
            self._sum -= self._counts.popleft()[1]


class TokenBucket:
    """``burst`` tokens refilled at ``rate`` per second; starts full."""

    __slots__ = ("_rate", "_burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: float) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        if burst < 0:
            raise ValueError("burst must be >= 0")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last: float | None = None

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens if available; ``False`` (taking nothing) otherwise."""
        if self._last is not None and now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def wait(self, now: float, n: float = 1.0) -> float:
        """Seconds from ``now`` until ``n`` tokens will be available (0 if they are)."""
        tokens = self._tokens
        if self._last is not None and now > self._last:
            tokens = min(self._burst, tokens + (now - self._last) * self._rate)
        if tokens >= n:
            return 0.0
        return (n - tokens) / self._rate if self._rate > 0 else float("inf")


class TenantLimits:
    """The tenant-wide counters of protocol.md §8, shared by every session of a node.

    Rates are rolling averages over the last minute (``RollingRate``).  ``*_exceeded`` asks
    whether a limit is *currently triggered*, which is how the reference decides (the event
    that trips it is still accepted; the next ones are refused).
    """

    def __init__(
        self,
        *,
        max_concurrent_users: int = 200,
        max_events_per_second: int = 100,
        max_joins_per_second: int = 100,
        max_presence_events_per_second: int = 1000,
    ) -> None:
        self.max_concurrent_users = max_concurrent_users
        self.max_events_per_second = max_events_per_second
        self.max_joins_per_second = max_joins_per_second
        self.max_presence_events_per_second = max_presence_events_per_second
        self.users = 0
        self.events = RollingRate()
        self.joins = RollingRate()
        self.presence = RollingRate()
        #: the other nodes' figures from their last heartbeats: limits are cluster-wide
        self.remote_users = 0
        self.remote_events = 0.0
        self.remote_joins = 0.0
        self.remote_presence = 0.0

    # concurrent users: sockets that have joined at least one channel
    def users_full(self) -> bool:
        return self.users + self.remote_users >= self.max_concurrent_users

    def add_user(self) -> None:
        self.users += 1

    def remove_user(self) -> None:
        self.users = max(0, self.users - 1)

    def joins_exceeded(self, now: float) -> bool:
        return self.joins.rate(now) + self.remote_joins >= self.max_joins_per_second

    def events_exceeded(self, now: float) -> bool:
        return self.events.rate(now) + self.remote_events >= self.max_events_per_second

    def events_remaining(self, now: float) -> float:
        return self.max_events_per_second - self.events.rate(now) - self.remote_events

    def presence_exceeded(self, now: float) -> bool:
        return self.presence.rate(now) + self.remote_presence >= self.max_presence_events_per_second
