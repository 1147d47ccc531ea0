"""One LISTEN session, reconnecting with back-off: what the wake-ups and the row-change waits share.

LISTEN needs a real session, so each listener has its own connection (a transaction-mode pooler
such as Supavisor on port 6543 would silently drop notifications: use the direct or session-mode
URL). Notifications sent while disconnected are lost: ``on_connect`` runs after every (re)connect,
once the channels are listened to, so the caller can catch up on what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import psycopg

log = logging.getLogger(__name__)


async def listen(
    dsn: str,
    channels: Sequence[str],
    *,
    on_notify: Callable[[str, str], None],
    on_connect: Callable[[], None],
    on_disconnect: Callable[[], None] = lambda: None,
    stop: asyncio.Event | None = None,
    max_backoff: float,
    name: str,
) -> None:
    """``on_notify(channel, payload)`` for every notification, until ``stop`` is set (or the task
    is cancelled); a lost connection is logged, ``on_disconnect`` called, and retried after a
    back-off from 0.5 s doubling up to ``max_backoff``."""
    stopped = stop or asyncio.Event()  # never set: cancellation ends it
    backoff = 0.5
    while not stopped.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                for channel in channels:
                    await conn.execute(f"listen {channel}")
                backoff = 0.5
                on_connect()
                while not stopped.is_set():
                    # A bounded wait, so that a set ``stop`` is seen within a second.
                    async for notify in conn.notifies(timeout=1.0):
                        on_notify(notify.channel, notify.payload)
        except psycopg.Error as exc:
            on_disconnect()
            log.warning("%s listener disconnected (%s); retrying in %.1fs", name, exc, backoff)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await stopped.wait()
            backoff = min(max_backoff, backoff * 2)
