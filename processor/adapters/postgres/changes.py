"""``RowChanges`` over ``LISTEN edit_request_changes``: one connection per process, fanned out to waiters.

Waiting callers (REST ``wait=true`` and event streams, MCP) used to poll the row several times a
second each, through a small pool shared with every other request. Now each waiter sleeps on an
event that the listener sets when the database says the row changed; the connection is opened on
the first watch and kept while anyone watches. After a reconnect every waiter is woken once
(changes may have been missed), and waiters re-read at a fallback interval in any case.

The database notifies only rows somebody watches (a NOTIFY makes commits on the whole server take
turns): the first waiter on a row has it written to ``edit_request_watches`` (through a second
connection) before it reads the row; a background task removes rows nobody waits on any more and
renews the rest every ``WATCH_RENEW_SECONDS``, so what a process that died leaves expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

import psycopg

from processor.adapters.postgres.listen import listen
from processor.domain.rules import CHANGES_CHANNEL, WATCH_RENEW_SECONDS, WATCH_SECONDS

log = logging.getLogger(__name__)


class _Watch:
    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()

    async def wait(self, timeout: float) -> bool:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives as the event is set, and a waiter in a loop would then never end.
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return True


class PostgresRowChanges:
    """One LISTEN session for every waiter of this process, and one connection to say what it watches."""

    def __init__(
        self,
        dsn: str,
        *,
        max_backoff: float = 10.0,
        renew_seconds: float = WATCH_RENEW_SECONDS,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self._dsn = dsn
        self._max_backoff = max_backoff
        self._renew_seconds = renew_seconds
        self._watch_seconds = watch_seconds
        # Unique per instance: two processes (or two apps in one) never touch each other's watches.
        self.watcher = f"{socket.gethostname()[:100]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._watches: defaultdict[uuid.UUID, set[_Watch]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        # What the database holds for this watcher, as of the last call that went through.
        self._registered: frozenset[uuid.UUID] = frozenset()
        self._control: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._control_lock = asyncio.Lock()
        self._stale = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Nothing to do yet: the connections open with the first watch."""

    async def close(self) -> None:
        for task in (self._listener, self._syncer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._syncer = None
        self._watches.clear()
        if self._registered:
            await self._sync()
        async with self._control_lock:
            if self._control is not None:
                await self._control.close()
                self._control = None

    @contextlib.asynccontextmanager
    async def watch(self, request_id: uuid.UUID) -> AsyncIterator[_Watch]:
        watch = _Watch()
        self._watches[request_id].add(watch)
        try:
            self._start()
            # The caller reads the row after this returns: the watch and the LISTEN must be in
            # place first, or a change between that read and them would go unseen until the
            # fallback re-read.
            if request_id not in self._registered:
                await self._sync()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._listening.wait()
            yield watch
        finally:
            watchers = self._watches.get(request_id)
            if watchers is not None:
                watchers.discard(watch)
                if not watchers:
                    del self._watches[request_id]
                    # Removed from the database by the syncer: no await here, where a cancelled
                    # caller (a client that went away) could not finish one.
                    self._stale.set()

    def _start(self) -> None:
        if self._listener is None or self._listener.done():
            self._listening.clear()
            self._listener = asyncio.create_task(self._listen(), name="row-changes")
        if self._syncer is None or self._syncer.done():
            self._syncer = asyncio.create_task(self._keep_synced(), name="row-change-watches")

    async def _sync(self) -> None:
        """Make the database's watches for this watcher the rows waited on now, renewed.

        A failure is logged, not raised: without its watch a waiter still sees the row at its
        fallback re-read, and the next call (a new watch, the renewal, a reconnect) puts it right.
        """
        async with self._control_lock:
            wanted = frozenset(self._watches)
            try:
                if self._control is None or self._control.closed:
                    self._control = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                await self._control.execute(
                    "select public.set_edit_request_watches(%s, %s, %s)",
                    (self.watcher, list(wanted), self._watch_seconds),
                )
            except psycopg.Error as exc:
                log.warning("row-change watches not updated (%s): waiters fall back to re-reading", exc)
                self._drop_control()
                return
            except BaseException:
                # Cancelled mid-call: the connection's state is unknown, so it is not reused.
                self._drop_control()
                raise
            self._registered = wanted

    def _drop_control(self) -> None:
        control, self._control = self._control, None
        self._registered = frozenset()
        if control is not None:
            control.pgconn.finish()  # synchronous: usable where an await is not

    async def _keep_synced(self) -> None:
        """Remove what nobody waits on any more, soon; renew the rest every ``renew_seconds``."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._renew_seconds):
                    await self._stale.wait()
            self._stale.clear()
            if self._watches or self._registered:
                await self._sync()

    async def _listen(self) -> None:
        await listen(
            self._dsn,
            (CHANGES_CHANNEL,),
            on_notify=lambda _channel, payload: self._dispatch(payload),
            on_connect=self._connected,
            on_disconnect=self._listening.clear,
            max_backoff=self._max_backoff,
            name="row-change",
        )

    def _connected(self) -> None:
        self._listening.set()
        self._wake_all()  # whatever changed while we were not listening

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
