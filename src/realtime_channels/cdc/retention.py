"""Retained transactions for postgres_changes resume (sans-I/O; protocol.md §4.10).

Every change the feed routes has an *offset* (``protocol.offsets``).
``ChangeRetention`` keeps the transactions routed in the last ``window_s`` seconds, at most
``max_changes`` changes in all, so a channel that names the last offset it saw can be sent what
came after.  ``complete_after`` is the end LSN after which nothing was dropped: a resume from an
older offset has a gap.  The replication reader asks ``hold()`` which position it may confirm
to PostgreSQL, so the slot keeps what is retained and a restarted server reads it again
(``history``) without routing it twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..protocol.offsets import Position, format_offset, parse_offset
from .types import Transaction

__all__ = ["ChangeRetention", "Position", "format_offset", "parse_offset"]

_US_2000 = 946_684_800_000_000  # 2000-01-01 UTC in µs since the Unix epoch


@dataclass(slots=True)
class _Kept:
    txn: Transaction
    at: float  # wall-clock seconds: when routed, or the commit time for a transaction read again


class ChangeRetention:
    def __init__(self, window_s: float, max_changes: int, clock: Callable[[], float]) -> None:
        """``clock``: wall-clock seconds (``time.time``)."""
        self.window_s = window_s
        self.max_changes = max_changes
        self._clock = clock
        self._kept: deque[_Kept] = deque()
        self._changes = 0
        #: every transaction ending after this LSN is retained; ``None``: nothing is known
        #: before the first retained transaction (a node that started after the others)
        self.complete_after: int | None = None

    def __len__(self) -> int:
        return self._changes

    @property
    def last_lsn(self) -> int:
        return self._kept[-1].txn.end_lsn if self._kept else (self.complete_after or 0)

    def start(self, confirmed_lsn: int) -> None:
        """The reader starts streaming at the slot's confirmed position: everything after it
        will be read, so nothing after it is missing (the first start of the process only)."""
        if self.complete_after is None and not self._kept:
            self.complete_after = confirmed_lsn

    def add(self, txn: Transaction, at: float | None = None) -> bool:
        """Retain a routed transaction (once: an end LSN not above the newest is ignored)."""
        if self._kept and txn.end_lsn <= self._kept[-1].txn.end_lsn:
            return False
        if self.complete_after is not None and txn.end_lsn <= self.complete_after:
            return False
        self._kept.append(_Kept(txn, self._clock() if at is None else at))
        self._changes += len(txn.changes)
        self._evict()
        return True

    def merge_older(self, txns: Sequence[Transaction], complete_after: int | None) -> None:
        """Transactions another node retained, for a node that started later (sent in several
        parts, oldest first): those not retained here are merged in, in commit order; with
        ``complete_after`` (the last part) nothing after it is missing any more (every node is
        sent every transaction after those shared)."""
        have = {k.txn.end_lsn for k in self._kept}
        new = [_Kept(t, (t.commit_ts_us + _US_2000) / 1_000_000) for t in txns
               if t.end_lsn not in have and (self.complete_after is None or t.end_lsn > self.complete_after)]
        if new:
            self._kept = deque(sorted([*self._kept, *new], key=lambda k: k.txn.end_lsn))
            self._changes += sum(len(k.txn.changes) for k in new)
        if complete_after is not None and self.complete_after is None:
            self.complete_after = complete_after  # a boundary of this node's own stays: it is exact
        self._evict()

    def reset(self, lsn: int) -> None:
        """The feed restarted from nothing at ``lsn`` (its slot was recreated): what is retained
        is still true, but what came between it and ``lsn`` is missing, so a resume from before
        ``lsn`` has a gap."""
        self._kept.clear()
        self._changes = 0
        self.complete_after = lsn

    def retained(self) -> list[Transaction]:
        self._evict()
        return [k.txn for k in self._kept]

    def history(self, txn: Transaction) -> None:
        """A transaction routed before this process started, read again from the slot: retained
        as of its commit time, never routed."""
        self.add(txn, at=(txn.commit_ts_us + _US_2000) / 1_000_000)

    def hold(self) -> int | None:
        """The highest position the reader may confirm while something is retained (``None``:
        nothing is retained, confirm freely)."""
        self._evict()
        if not self._kept:
            return None
        return self.complete_after if self.complete_after is not None else self._kept[0].txn.commit_lsn

    def has_gap(self, pos: Position) -> bool:
        """Whether changes after ``pos`` may have been dropped (or never seen by this node)."""
        self._evict()
        if self.complete_after is not None:
            return pos[0] < self.complete_after
        return not self._kept or pos[0] < self._kept[0].txn.end_lsn

    def first_offset(self) -> str | None:
        if not self._kept:
            return None
        return format_offset(self._kept[0].txn.end_lsn, 0)

    def after(self, pos: Position) -> list[tuple[Transaction, int]]:
        """The retained transactions with changes after ``pos``, oldest first, each with the
        index of its first change after ``pos``."""
        self._evict()
        out: list[tuple[Transaction, int]] = []
        for kept in reversed(self._kept):
            txn = kept.txn
            if txn.end_lsn < pos[0]:
                break
            if txn.end_lsn == pos[0]:
                if pos[1] + 1 < len(txn.changes):
                    out.append((txn, pos[1] + 1))
                break
            out.append((txn, 0))
        out.reverse()
        return out

    def _evict(self) -> None:
        horizon = self._clock() - self.window_s
        kept = self._kept
        while kept and (self._changes > self.max_changes or kept[0].at < horizon):
            gone = kept.popleft()
            self._changes -= len(gone.txn.changes)
            self.complete_after = gone.txn.end_lsn
