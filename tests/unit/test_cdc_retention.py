"""The retention of routed transactions for postgres_changes resume (cdc/retention.py, §4.10)."""

from __future__ import annotations

from realtime_channels.cdc.retention import ChangeRetention
from realtime_channels.cdc.types import Change, Transaction
from realtime_channels.protocol.offsets import format_offset, parse_offset

_US_2000 = 946_684_800_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def txn(end_lsn: int, n: int = 1, commit_s: float = 0.0) -> Transaction:
    changes = tuple(Change(None, "INSERT", None, None, None) for _ in range(n))  # type: ignore[arg-type]
    return Transaction(xid=end_lsn, commit_lsn=end_lsn - 5, end_lsn=end_lsn,
                       commit_ts_us=int(commit_s * 1_000_000) - _US_2000, changes=changes)


def test_offsets_round_trip_and_sort_in_commit_order() -> None:
    a, b, c = format_offset(0x16B3740, 1), format_offset(0x16B3740, 2), format_offset(0x1_0000_0000, 0)
    assert a == "00000000016B3740-00000001"
    assert a < b < c
    assert parse_offset(b) == (0x16B3740, 2)
    for bad in ("", "16B3740-1", "00000000016b3740-00000001", 5, None, "00000000016B3740-00000001x"):
        assert parse_offset(bad) is None


def test_after_returns_the_changes_after_a_position_oldest_first() -> None:
    r = ChangeRetention(120, 100, Clock())
    r.start(50)
    for lsn, n in ((100, 2), (200, 3), (300, 1)):
        assert r.add(txn(lsn, n))
    assert not r.add(txn(200, 1)), "an end LSN already retained is ignored"
    assert [(t.end_lsn, first) for t, first in r.after((100, 0))] == [(100, 1), (200, 0), (300, 0)]
    assert [(t.end_lsn, first) for t, first in r.after((100, 1))] == [(200, 0), (300, 0)]
    assert [(t.end_lsn, first) for t, first in r.after((200, 1))] == [(200, 2), (300, 0)]
    assert r.after((300, 0)) == [] and r.after((900, 0)) == []
    assert not r.has_gap((50, 0)) and not r.has_gap((100, 0))
    assert r.has_gap((49, 0))


def test_window_and_change_cap_evict_and_move_the_gap_boundary() -> None:
    clock = Clock()
    r = ChangeRetention(120, 4, clock)
    r.start(50)
    r.add(txn(100, 2))
    clock.now += 100
    r.add(txn(200, 2))
    assert r.hold() == 50, "the slot may be confirmed only up to what is retained"
    r.add(txn(300, 1))  # five changes: the oldest transaction goes
    assert r.complete_after == 100 and len(r) == 3
    assert r.has_gap((50, 0)) and not r.has_gap((100, 1))
    assert r.first_offset() == format_offset(200, 0)
    clock.now += 121  # everything is older than the window
    assert r.hold() is None, "nothing retained: confirm freely"
    assert r.complete_after == 300 and r.after((0, 0)) == []


def test_history_is_aged_by_commit_time_and_a_late_node_knows_nothing_before_its_first() -> None:
    clock = Clock()
    r = ChangeRetention(120, 100, clock)
    r.start(10)
    r.history(txn(100, 1, commit_s=clock.now - 200))  # routed before the restart, too old
    r.history(txn(200, 1, commit_s=clock.now - 60))
    assert [t.end_lsn for t, _ in r.after((0, 0))] == [200]
    assert r.complete_after == 100
    late = ChangeRetention(120, 100, clock)  # a node that never read the slot (no start)
    late.add(txn(500))
    assert late.has_gap((400, 0)) and not late.has_gap((500, 0))
    assert ChangeRetention(120, 100, clock).has_gap((1, 0))


def test_a_snapshot_covers_the_transactions_it_saw_committed() -> None:
    from realtime_channels.cdc.types import Snapshot

    snap = Snapshot.parse("1000:1010:1003,1007", "0/5000")
    at = lambda xid, lsn=0x4000: Transaction(xid, lsn, lsn + 8, 0, ())  # noqa: E731
    assert snap.covers(at(999)) and snap.covers(at(1002)) and snap.covers(at(1009))
    assert not snap.covers(at(1003)) and not snap.covers(at(1007)), "in progress when it was taken"
    assert not snap.covers(at(1010)) and not snap.covers(at(1500)), "began after it"
    assert not snap.covers(at(999, lsn=0x5001)), "committed after the insert position read with it"
    # 32-bit ids from pgoutput next to 64-bit ids across an epoch boundary
    wrapped = Snapshot.parse(f"{(1 << 32) - 5}:{(1 << 32) + 5}:", "0/5000")
    assert wrapped.covers(at((1 << 32) - 2)) and wrapped.covers(at(3))
    assert not wrapped.covers(at(5)) and not wrapped.covers(at(9))


def test_a_node_that_started_later_merges_what_the_reader_retained_in_parts() -> None:
    clock = Clock()
    late = ChangeRetention(120, 100, clock)
    late.add(txn(500, commit_s=clock.now))  # routed live before the reader's answer came
    parts = [[txn(100, commit_s=clock.now), txn(200, commit_s=clock.now)], [txn(300, commit_s=clock.now), txn(500, commit_s=clock.now)]]
    late.merge_older(parts[0], None)
    assert late.has_gap((50, 0)), "nothing is known before 100 yet"
    late.merge_older(parts[1], 60)
    assert [t.end_lsn for t in late.retained()] == [100, 200, 300, 500]
    assert not late.has_gap((60, 0)) and late.has_gap((59, 0))
    assert [t.end_lsn for t, _ in late.after((200, 0))] == [300, 500]
    own = ChangeRetention(120, 2, clock)
    for lsn in (700, 800, 900):
        own.add(txn(lsn))
    own.merge_older([txn(650, commit_s=clock.now)], 10)
    assert own.complete_after == 700, "a boundary the node knows itself is kept"
