"""Conformance of the ``Wakeups`` port: ``PostgresNotifications`` (LISTEN on the real database) and
``InMemoryWakeups`` (the in-memory queue's notifications) deliver the same pushes: one
``on_queued(None)`` on connect, ``on_queued(id)`` when a row becomes claimable now (not when it
waits for a back-off), ``on_cancel(id)`` when a running row is canceled, and stop on ``stop``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from processor.adapters.postgres.notifications import PostgresNotifications
from processor.adapters.postgres.queue import PostgresJobQueue
from processor.domain.ports.changes import Wakeups
from processor.domain.ports.queue import JobQueue
from processor.testing import InMemoryJobQueue, InMemoryWakeups, ManualClock
from tests.conftest import DEADLINE

Event = tuple[str, uuid.UUID | None]


class Backend(Protocol):
    wakeups: Wakeups
    queue: JobQueue

    def enqueue(self) -> uuid.UUID: ...

    def cancel(self, request_id: uuid.UUID) -> bool: ...


@dataclass
class PostgresBackend:
    wakeups: PostgresNotifications
    queue: PostgresJobQueue
    add_request: Callable[..., uuid.UUID]
    db: Any

    def enqueue(self) -> uuid.UUID:
        return self.add_request()

    def cancel(self, request_id: uuid.UUID) -> bool:
        return bool(
            self.db.execute("select cancel_edit_request(%s) as done", (request_id,)).fetchone()["done"]
        )


@dataclass
class MemoryBackend:
    wakeups: InMemoryWakeups
    queue: InMemoryJobQueue

    def enqueue(self) -> uuid.UUID:
        return self.queue.enqueue()

    def cancel(self, request_id: uuid.UUID) -> bool:
        return self.queue.cancel(request_id)


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.database), "memory"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "postgres":
        url = request.getfixturevalue("database_url")
        yield PostgresBackend(
            PostgresNotifications(url),
            PostgresJobQueue(url),
            request.getfixturevalue("add_request"),
            request.getfixturevalue("db"),
        )
    else:
        queue = InMemoryJobQueue(clock=ManualClock())
        yield MemoryBackend(InMemoryWakeups(queue), queue)


def test_wakeups_push_claimable_rows_and_cancels(backend: Backend) -> None:
    async def scenario() -> tuple[list[Event], uuid.UUID, uuid.UUID]:
        events: asyncio.Queue[Event] = asyncio.Queue()
        stop = asyncio.Event()
        listener = asyncio.create_task(
            backend.wakeups.run(
                on_queued=lambda rid: events.put_nowait(("queued", rid)),
                on_cancel=lambda rid: events.put_nowait(("cancel", rid)),
                stop=stop,
            )
        )

        async def next_event() -> Event:
            return await asyncio.wait_for(events.get(), timeout=DEADLINE)

        seen = [await next_event()]  # connected
        await backend.queue.open()
        try:
            request_id = backend.enqueue()
            seen.append(await next_event())
            job = await backend.queue.claim("w1", 60)
            assert job is not None and job.id == request_id
            # A retry waiting for its back-off is not claimable now: no push.
            await backend.queue.fail(request_id, "w1", "flaky", retryable=True, error_code="model_error")
            running = backend.enqueue()
            seen.append(await next_event())
            await backend.queue.claim("w1", 60, running)
            backend.cancel(running)
            seen.append(await next_event())
        finally:
            await backend.queue.close()
        stop.set()
        await asyncio.wait_for(listener, timeout=DEADLINE)
        assert events.empty()
        return seen, request_id, running

    events, request_id, running = asyncio.run(scenario())
    assert events == [("queued", None), ("queued", request_id), ("queued", running), ("cancel", running)]
