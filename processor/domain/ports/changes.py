"""The change ports: pushes from the database (wake-ups for workers, row changes for waiters)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Wakeups(Protocol):
    """Pushes from the database: a request may be claimable, or one was canceled."""

    async def run(
        self,
        *,
        on_queued: Callable[[uuid.UUID | None], None],
        on_cancel: Callable[[uuid.UUID], None],
        stop: asyncio.Event,
    ) -> None:
        """Dispatch until ``stop`` is set, reconnecting as needed; ``on_queued(None)`` after each connect."""
        ...


class Watch(Protocol):
    """A registration for one row's changes, made before the row is read so no change is missed."""

    async def wait(self, timeout: float) -> bool:
        """Return True once the row changed since the last wait (or the watch began), False on timeout."""
        ...


class RowChanges(Protocol):
    """Pushes when a request's client-visible state changes (status, progress, output, reason)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def watch(self, request_id: uuid.UUID) -> AbstractAsyncContextManager[Watch]: ...
