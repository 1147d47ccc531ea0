"""``RowChanges`` over ``LISTEN edit_request_changes``: one connection per process, fanned out to waiters.

Waiting callers (REST ``wait=true`` and event streams, MCP) used to poll the row several times a
second each, through a small pool shared with every other request. Now each waiter sleeps on an
event that the listener sets when the database says the row changed; the connection is opened on
the first watch and kept while anyone watches. After a reconnect every waiter is woken once
(changes may have been missed), and waiters re-read at a fallback interval in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

import psycopg

from processor.domain.rules import CHANGES_CHANNEL

log = logging.getLogger(__name__)


class _Watch:
    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout=timeout)
        except TimeoutError:
            return False
        self._changed.clear()
        return True


class PostgresRowChanges:
    """One LISTEN session for every waiter of this process."""

    def __init__(self, dsn: str, *, max_backoff: float = 10.0) -> None:
        self._dsn = dsn
        self._max_backoff = max_backoff
        self._watches: defaultdict[uuid.UUID, set[_Watch]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def open(self) -> None:
        """Nothing to do yet: the connection opens with the first watch."""

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    @contextlib.asynccontextmanager
    async def watch(self, request_id: uuid.UUID) -> AsyncIterator[_Watch]:
        watch = _Watch()
        self._watches[request_id].add(watch)
        if self._listener is None or self._listener.done():
            self._listening.clear()
            self._listener = asyncio.create_task(self._listen(), name="row-changes")
        # The caller reads the row after this returns: LISTEN must be in place first, or a
        # change between that read and the LISTEN would go unseen until the fallback re-read.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout=5.0)
        try:
            yield watch
        finally:
            watchers = self._watches.get(request_id)
            if watchers is not None:
                watchers.discard(watch)
                if not watchers:
                    del self._watches[request_id]

    async def _listen(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                    await conn.execute(f"listen {CHANGES_CHANNEL}")
                    backoff = 0.5
                    self._listening.set()
                    self._wake_all()  # whatever changed while we were not listening
                    async for notify in conn.notifies():
                        self._dispatch(notify.payload)
            except psycopg.Error as exc:
                self._listening.clear()
                log.warning("row-change listener disconnected (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(self._max_backoff, backoff * 2)

    def _dispatch(self, payload: str) -> None:
        try:
            request_id = uuid.UUID(payload)
        except ValueError:
            return
        for watch in self._watches.get(request_id, ()):
            watch.notify()

    def _wake_all(self) -> None:
        for watchers in self._watches.values():
            for watch in watchers:
                watch.notify()
