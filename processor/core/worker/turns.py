"""The worker's GPU turns: how many edits run on the editor at once, handed out in order of readiness.

A job takes a turn once it is downloaded, decoded and prepared, and gives it back the moment its edit
returns, before its output is encoded and uploaded: the next job's edit starts while this one's
output is finished. A job stopped while it waits (a cancel, a lost lease, shutdown) leaves at once
with ``EditCancelled``, without waiting for the edit that holds the GPU.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from processor.core.worker.job import ActiveJob
from processor.domain.errors import EditCancelled


class GpuTurns:
    """``async with turns.turn(active):`` around the editor call; first ready, first served."""

    def __init__(self, capacity: int) -> None:
        self._free = capacity
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @contextlib.asynccontextmanager
    async def turn(self, active: ActiveJob) -> AsyncIterator[None]:
        await self._acquire(active)
        active.turn_taken()
        try:
            yield
        finally:
            self._release()
            active.turn_given_back()

    async def _acquire(self, active: ActiveJob) -> None:
        active.raise_if_stopped()
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        stopping: asyncio.Future[bool] = asyncio.ensure_future(active.stopped.wait())
        waits: list[asyncio.Future[Any]] = [granted, stopping]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._abandon(granted)
            raise
        finally:
            stopping.cancel()
        if granted.done() and active.stop_reason is None:
            return
        self._abandon(granted)
        raise EditCancelled(f"stopped while it waited for the GPU ({active.stop_reason})")

    def _abandon(self, granted: asyncio.Future[None]) -> None:
        """A waiter leaves: out of the line, or, if the turn was already handed to it, passed on."""
        if granted.done() and not granted.cancelled():
            self._release()
            return
        granted.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(granted)

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # handed over: the count of free turns does not change
                return
        self._free += 1
