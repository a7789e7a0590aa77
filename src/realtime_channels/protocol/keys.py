"""The two kinds of names a message is routed by.

* a **topic** is what a client sees and joins: ``realtime:room1``;
* a **stream key** is what the hub and the backbone route on: a public and a private channel of
  one sub-topic are separate streams (§3.1, §4.4), and a private topic's presence diffs have a
  stream of their own (§5.2).  Internal streams (presence replication, shared database
  changes) have keys that no topic maps to.
"""

from __future__ import annotations

from typing import NewType

Topic = NewType("Topic", str)
StreamKey = NewType("StreamKey", str)

TOPIC_PREFIX = "realtime:"


def stream_key(private: bool, sub_topic: str) -> StreamKey:
    """Public and private channels of one sub-topic are separate streams (§3.1, §4.4)."""
    return StreamKey(("priv:" if private else "pub:") + sub_topic)


def presence_stream_key(private: bool, sub_topic: str) -> StreamKey:
    """Presence diffs of a private topic reach only members with presence-read (§5.2), so they
    travel on a stream of their own; a public topic's diffs go to every member."""
    return StreamKey(("privp:" if private else "pub:") + sub_topic)


def topic_of(stream: StreamKey) -> Topic:
    """``pub:room1`` / ``priv:room1`` / ``privp:room1`` → ``realtime:room1``."""
    return Topic(TOPIC_PREFIX + stream.split(":", 1)[1])
