"""Presence keys are version-1 UUIDs (as Supabase's are), made without libuuid."""

from __future__ import annotations

import time
import uuid

import pytest

from realtime_channels.transport import timeuuid

UUID_EPOCH_OFFSET_100NS = 0x01B21DD213814000


def test_keys_are_rfc_version_1_uuids_of_the_current_time() -> None:
    before = time.time_ns() // 100
    key = timeuuid.new_key()
    after = time.time_ns() // 100
    parsed = uuid.UUID(key)
    assert str(parsed) == key  # canonical lower-case form
    assert parsed.version == 1
    assert parsed.variant == uuid.RFC_4122
    assert before <= parsed.time - UUID_EPOCH_OFFSET_100NS <= after + 1
    assert parsed.node & 0x010000000000  # multicast bit: not a MAC address


def test_keys_never_repeat_and_their_times_only_move_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    times = iter([2_000_000_000_000_000_000] * 3 + [1_999_000_000_000_000_000] * 2 + [2_000_000_000_000_100_000])
    monkeypatch.setattr(timeuuid.time, "time_ns", lambda: next(times))
    stamps = [uuid.UUID(timeuuid.new_key()).time for _ in range(6)]
    assert stamps == sorted(set(stamps))  # a stalled and a stepped-back clock still give fresh keys
    assert stamps[-1] - UUID_EPOCH_OFFSET_100NS == 2_000_000_000_000_100_000 // 100
