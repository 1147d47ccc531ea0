"""LISTEN for the database's wake-up and cancel notifications, reconnecting forever (``listen``).

Notifications sent while disconnected are lost; on every (re)connect ``on_queued`` is called once
so the worker claims whatever waits.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from processor.adapters.postgres.listen import listen
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
        await listen(
            self._dsn,
            (QUEUED_CHANNEL, CANCEL_CHANNEL),
            on_notify=lambda channel, payload: _dispatch(channel, payload, on_queued, on_cancel),
            on_connect=lambda: on_queued(None),
            stop=stop,
            max_backoff=self._max_backoff,
            name="notification",
        )


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
