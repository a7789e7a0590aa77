"""Broadcast offsets and their retention log in Redis, for :class:`~.redis.RedisPubSub`.

Each stream ``s`` has two keys sharing the hash tag ``{s}`` (so one Redis Cluster slot holds
both): ``<prefix>{s}:m``, a hash with the epoch ``e`` and the last offset ``n``, and
``<prefix>{s}:l``, a list of the retained frames, oldest first (a Redis Cluster node's shard
channel for ``s`` is ``<prefix>{s}``, in the same slot).  ``PUBLISH_LUA`` runs as one
script per broadcast: it increments ``n``, appends the frame with its offset trailer
(wire.py) to the log, trims the log by count and by age, refreshes both keys' expiry to the
window, and PUBLISHes the same bytes — so every node receives a stream's broadcasts in offset
order, whichever node sent them.  A stream whose keys expired (idle for the window) or were
evicted starts a new epoch with offset 1.

Log entries are ``<15-digit ms time><frame>``; the time is Redis's own clock (``TIME``), so the
nodes' clocks do not matter.  Because offsets are dense and the log only loses entries at its
head, the oldest retained offset is ``n - LLEN + 1``.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from ..protocol.codec import Broadcast
from .retention import Gap, History, RetentionLimits, new_epoch, plan
from .wire import decode_envelope

TIME_DIGITS = 15

_PRELUDE = """
local function open_stream(meta, log, candidate, window)
  local epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    epoch = candidate
    redis.call('DEL', log)
    redis.call('HSET', meta, 'e', epoch, 'n', 0)
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local cutoff = now - tonumber(window)
  while true do
    local head = redis.call('LINDEX', log, 0)
    if not head or tonumber(string.sub(head, 1, 15)) >= cutoff then break end
    redis.call('LPOP', log)
  end
  return epoch, now
end
local function touch(meta, log, window)
  redis.call('PEXPIRE', meta, window)
  redis.call('PEXPIRE', log, window)
end
"""

_PUBLISH_BODY = """
local epoch, now = open_stream(KEYS[1], KEYS[2], ARGV[3], ARGV[5])
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local msg = ARGV[2] .. string.format('%020d', n) .. epoch
redis.call('RPUSH', KEYS[2], string.format('%015d', now) .. msg)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
touch(KEYS[1], KEYS[2], ARGV[5])
redis.call('$PUBLISH', ARGV[1], msg)
return n
"""

#: KEYS: meta, log.  ARGV: channel, frame (offset flag set, trailer missing), epoch candidate,
#: max messages, window ms.  Returns the offset.
PUBLISH_LUA = _PRELUDE + _PUBLISH_BODY.replace("$PUBLISH", "PUBLISH")
#: The same over sharded pub/sub, for Redis Cluster (redis_cluster.py): the channel ARGV[1]
#: must be in the slot of the keys.
SPUBLISH_LUA = _PRELUDE + _PUBLISH_BODY.replace("$PUBLISH", "SPUBLISH")

#: KEYS: meta, log.  ARGV: epoch candidate, window ms, asked epoch, after.
#: Returns {epoch, head, first, entries (from the first one to replay)}.
HISTORY_LUA = _PRELUDE + """
local epoch, now = open_stream(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
touch(KEYS[1], KEYS[2], ARGV[2])
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
local first = n - redis.call('LLEN', KEYS[2]) + 1
local start = first
if ARGV[3] == epoch then
  start = math.max(first, tonumber(ARGV[4]) + 1)
end
return {epoch, n, first, redis.call('LRANGE', KEYS[2], start - first, -1)}
"""


def keys(prefix: str, stream: str) -> tuple[str, str]:
    return f"{prefix}{{{stream}}}:m", f"{prefix}{{{stream}}}:l"


def publish_args(limits: RetentionLimits, channel: str, frame: bytes, candidate: str) -> tuple[Any, ...]:
    return channel, frame, candidate, limits.max_messages, max(1, int(limits.window_s * 1000))


def history_args(limits: RetentionLimits, candidate: str, epoch: str, after: int) -> tuple[Any, ...]:
    return candidate, max(1, int(limits.window_s * 1000)), epoch, after


def parse_history(reply: Any) -> tuple[str, int, int, list[bytes]]:
    """``(epoch, head, first, frames)`` of a ``HISTORY_LUA`` reply."""
    epoch, head, first, entries = reply
    text = epoch.decode("ascii") if isinstance(epoch, bytes) else str(epoch)
    return text, int(head), int(first), [bytes(e)[TIME_DIGITS:] for e in entries]


async def read_history(pub: Redis, stream_keys: tuple[str, str], limits: RetentionLimits, epoch: str,
                       after: int) -> tuple[History[Broadcast], Gap | None]:
    """The retained broadcasts (in the log at ``stream_keys``, see :func:`keys`) after
    ``(epoch, after)`` and the gap before them; raises what Redis or a malformed entry raises."""
    reply = await pub.eval(HISTORY_LUA, 2, *stream_keys, *history_args(limits, new_epoch(), epoch, after))
    current, head, first, frames = parse_history(reply)
    start, gap = plan(current, head, first, after, epoch)
    entries = []
    for offset, frame in enumerate(frames, start):
        b = decode_envelope(frame).broadcast
        if b is not None:
            entries.append((offset, b))
    return History(current, head, first, tuple(entries)), gap
