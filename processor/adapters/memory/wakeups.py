"""``Wakeups`` from an ``InMemoryJobQueue``: what LISTEN delivers from the database's NOTIFYs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from processor.adapters.memory.queue import InMemoryJobQueue


class InMemoryWakeups:
    """Delivers the queue's notifications on the running event loop until ``stop`` is set."""

    def __init__(self, queue: InMemoryJobQueue) -> None:
        self._queue = queue

    async def run(
        self,
        *,
        on_queued: Callable[[uuid.UUID | None], None],
        on_cancel: Callable[[uuid.UUID], None],
        stop: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()

        # The queue may change from any thread (a test's); the callbacks run on the loop.
        def queued(request_id: uuid.UUID) -> None:
            loop.call_soon_threadsafe(on_queued, request_id)

        def canceled(request_id: uuid.UUID) -> None:
            loop.call_soon_threadsafe(on_cancel, request_id)

        unsubscribe = self._queue.subscribe(on_queued=queued, on_cancel=canceled)
        try:
            on_queued(None)  # as after every (re)connect: claim whatever already waits
            await stop.wait()
        finally:
            unsubscribe()
