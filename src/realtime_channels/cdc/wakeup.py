"""Waiting for a socket, a timeout or an explicit wake-up, on a bare future.

``asyncio.wait_for`` can swallow a cancellation on Python 3.11 (postgres-cdc.md "Pitfalls"), so
the replication reader waits on a future that a timer, ``loop.add_reader``/``add_writer`` or
``wake()`` (from ``stop()``) resolves.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None

    def wake(self) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, timeout: float, read_fd: int | None = None, write_fd: int | None = None) -> None:
        """Until ``read_fd`` is readable / ``write_fd`` writable, ``timeout`` passes or ``wake()``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._fut = fut
        wake = self.wake
        timer = loop.call_later(max(timeout, 0.0), wake)
        if read_fd is not None:
            loop.add_reader(read_fd, wake)
        if write_fd is not None:
            loop.add_writer(write_fd, wake)
        try:
            await fut
        finally:
            timer.cancel()
            if read_fd is not None:
                loop.remove_reader(read_fd)
            if write_fd is not None:
                loop.remove_writer(write_fd)
            self._fut = None
