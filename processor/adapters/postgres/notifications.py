"""LISTEN for the database's wake-up and cancel notifications, reconnecting forever.

LISTEN needs a real session, so this uses its own connection (a transaction-mode
pooler such as Supavisor on port 6543 would silently drop notifications: use the
direct or session-mode URL). Notifications sent while disconnected are lost; on
every (re)connect ``on_queued`` is called once so the worker claims whatever waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

import psycopg

from processor.domain.rules import CANCEL_CHANNEL, QUEUED_CHANNEL

log = logging.getLogger(__name__)


class PostgresNotifications:
    """``Wakeups`` from ``LISTEN edit_requests`` and ``LISTEN edit_requests_cancel``."""

    def __init__(self, dsn: str, *, max_backoff: float = 30.0) -> None:
        self._dsn = dsn
        self._max_backoff = max_backoff

    async def run(
        self,
        *,
        on_queued: Callable[[uuid.UUID | None], None],
        on_cancel: Callable[[uuid.UUID], None],
        stop: asyncio.Event,
    ) -> None:
        """Dispatch notifications until ``stop`` is set."""
        backoff = 0.5
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                    await conn.execute(f"listen {QUEUED_CHANNEL}")
                    await conn.execute(f"listen {CANCEL_CHANNEL}")
                    backoff = 0.5
                    on_queued(None)
                    while not stop.is_set():
                        async for notify in conn.notifies(timeout=1.0):
                            _dispatch(notify.channel, notify.payload, on_queued, on_cancel)
            except psycopg.Error as exc:
                log.warning("notification listener disconnected (%s); retrying in %.1fs", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await stop.wait()
                backoff = min(self._max_backoff, backoff * 2)


def _dispatch(
    channel: str,
    payload: str,
    on_queued: Callable[[uuid.UUID | None], None],
    on_cancel: Callable[[uuid.UUID], None],
) -> None:
    try:
        request_id = uuid.UUID(payload)
    except ValueError:
        log.warning("ignoring notification with a malformed payload on %s", channel)
        return
    if channel == QUEUED_CHANNEL:
        on_queued(request_id)
    elif channel == CANCEL_CHANNEL:
        on_cancel(request_id)
