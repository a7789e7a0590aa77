"""A ReplicationReader in its own process, for the SIGKILL test of test_replication.py.

Usage: ``python reader_proc.py DSN SLOT PUBLICATION OUT``

Appends one line per delivered transaction to ``OUT``: ``<end_lsn> <id>,<id>,...`` (the ``id``
column of every INSERT), written with a single ``os.write`` and fsynced before
``on_transaction`` returns.  A SIGKILL between that return and the reader storing its position
redelivers that one transaction after the restart (replication.py docstring), so this sink keeps
its own high-water mark: a transaction whose ``end_lsn`` is not above the last line is not
appended again but reported in ``OUT.redelivered`` as ``<end_lsn> <last end_lsn at start>``,
letting the test check that only that single transaction ever comes back.  State changes go to
``OUT.state``, one line each.  SIGTERM stops the reader cleanly (exit status 0).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from realtime_channels.cdc.replication import ReplicationReader, Transaction


def _last_lsn(path: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            lines = [line for line in f.read().splitlines() if line]
    except FileNotFoundError:
        return 0
    return int(lines[-1].split(" ", 1)[0]) if lines else 0


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


async def main(dsn: str, slot: str, publication: str, out: str) -> None:
    start_lsn = _last_lsn(out)
    last = start_lsn

    async def on_transaction(txn: Transaction) -> None:
        nonlocal last
        if txn.end_lsn <= last:
            _append(out + ".redelivered", f"{txn.end_lsn} {start_lsn}\n")
            return
        ids = []
        for change in txn.changes:
            if change.kind == "INSERT" and change.new is not None:
                index = [c.name for c in change.relation.columns].index("id")
                value = change.new.values[index]
                assert isinstance(value, bytes)
                ids.append(value.decode())
        _append(out, f"{txn.end_lsn} {','.join(ids)}\n")
        last = txn.end_lsn

    def on_state(state: str, detail: str | None) -> None:
        _append(out + ".state", f"{state} {detail or ''}\n")

    reader = ReplicationReader(dsn, slot=slot, publication=publication, on_transaction=on_transaction,
                               on_state=on_state, status_interval=0.2, reconnect_min=0.05, reconnect_max=0.5)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []  # keeps the stop task referenced until it ends
    loop.add_signal_handler(signal.SIGTERM, lambda: stopping.append(loop.create_task(reader.stop())))
    await reader.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
