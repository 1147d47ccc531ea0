"""Time for the in-memory adapters: the wall clock, or one that tests move by hand."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware (what ``now()`` is to the SQL functions)."""


def wall_clock() -> datetime:
    return datetime.now(UTC)


class ManualClock:
    """A clock that stands still until ``advance`` moves it: leases lapse and back-offs end
    without sleeping. Thread-safe, so a test thread may move it while the worker runs."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now
