"""Names and slot maps of the Redis Cluster backbone (pubsub/redis_cluster.py), without a server.

A stream's shard channel and its two retention keys must hash to one slot whatever braces the
tenant prefix or the stream contain (the publish script declares the keys and SPUBLISHes to the
channel, which Redis Cluster allows only within one slot), and different (prefix, stream) pairs
must get different channels whenever prefix + stream differ.
"""

from __future__ import annotations

import itertools

from redis.crc import key_slot

from realtime_channels.pubsub import redis_log
from realtime_channels.pubsub.redis_cluster import (
    SLOTS,
    covers_all,
    escape,
    hash_tag,
    node_url,
    parse_slots,
    shard_channel,
    stream_slot,
)

TRICKY = ["", "rc:", "rc:{}:", "rc:{x}:", "rc:}{:", "{", "}", "%7B", "%", "rc:a{b", "pub:room", "pub:{room}",
          "pub:}room{", "__cluster", "privp:r%7Dm", "{}"]


def slot(name: str) -> int:
    return int(key_slot(name.encode()))


def test_channel_and_retention_keys_share_a_slot_for_any_braces() -> None:
    for prefix, stream in itertools.product(TRICKY, TRICKY):
        channel = shard_channel(prefix, stream)
        meta, log = redis_log.keys("", hash_tag(prefix, stream))
        assert slot(channel) == slot(meta) == slot(log) == stream_slot(prefix, stream), (prefix, stream)
        assert channel.count("{") == 1 and channel.count("}") == 1


def test_channels_differ_when_names_differ() -> None:
    names = {prefix + stream for prefix, stream in itertools.product(TRICKY, TRICKY)}
    channels = {shard_channel("", name) for name in names}
    assert len(channels) == len(names)
    assert escape("a{b}%") == "a%7Bb%7D%25"
    assert shard_channel("rc:", "pub:room") == "{rc:pub:room}"


def test_streams_of_one_prefix_spread_over_the_slots() -> None:
    slots = {stream_slot("rc:t1:", f"pub:room-{i}") for i in range(200)}
    assert len(slots) > 150
    assert stream_slot("rc:t1:", "__cluster") != stream_slot("rc:t2:", "__cluster")


def test_cluster_slots_reply_becomes_a_sorted_topology() -> None:
    reply = [
        [10923, 16383, [b"10.0.0.3", 7002, b"id3"], [b"10.0.0.6", 7005, b"id6"]],
        [0, 5460, [b"", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
        [5461, 10922, [b"10.0.0.2", 7001, b"id2"]],
    ]
    ranges, nodes = parse_slots(reply, ("10.0.0.1", 7000))
    assert ranges == ((0, 5460, ("10.0.0.1", 7000)), (5461, 10922, ("10.0.0.2", 7001)),
                      (10923, 16383, ("10.0.0.3", 7002)))
    assert nodes == {("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002), ("10.0.0.4", 7003),
                     ("10.0.0.6", 7005)}
    assert covers_all((ranges, nodes))
    assert not covers_all((ranges[:2], nodes))
    assert not covers_all((((0, SLOTS - 2, ("h", 1)),), frozenset()))


def test_node_url_keeps_scheme_credentials_and_options() -> None:
    assert node_url("rediss://user:pw@seed:6379/0?ssl_cert_reqs=none", ("10.0.0.2", 7001)) == \
        "rediss://user:pw@10.0.0.2:7001/0?ssl_cert_reqs=none"
    assert node_url("redis://seed", ("::1", 7000)) == "redis://[::1]:7000"
