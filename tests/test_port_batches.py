"""Batches through the ``JobQueue`` port, the same on PostgreSQL and in memory: one batch, its requests
claimed by two workers, one failing, one succeeding, the rest canceled with the batch; counts and
progress as ``edit_batch_progress`` gives them (``InMemoryJobQueue.batch`` in memory)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import pytest

from processor.adapters.postgres.queue import PostgresJobQueue
from processor.domain.ports.queue import JobQueue
from processor.testing import InMemoryJobQueue
from tests.conftest import OWNER

Row = dict[str, Any]
LEASE = 60


class Backend(Protocol):
    queue: JobQueue

    def enqueue_batch(self, count: int, **columns: Any) -> tuple[uuid.UUID, list[uuid.UUID]]: ...

    def cancel_batch(self, batch_id: uuid.UUID) -> int: ...

    def progress(self, batch_id: uuid.UUID) -> tuple[dict[str, int], int, float]:
        """Counts by status (the nonzero ones), finished, progress."""
        ...

    def statuses(self, ids: list[uuid.UUID]) -> list[str]: ...


@dataclass
class PostgresBackend:
    queue: PostgresJobQueue
    db: psycopg.Connection[Row]

    def enqueue_batch(self, count: int, **columns: Any) -> tuple[uuid.UUID, list[uuid.UUID]]:
        paths = [f"{OWNER}/{uuid.uuid4()}.png" for _ in range(count)]
        for path in paths:
            self.db.execute(
                "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (path,)
            )
        values = {"user_id": OWNER, "prompt": "make it blue", "input_paths": paths, **columns}
        row = self.db.execute(
            f"insert into edit_batches ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) "
            "returning id",
            tuple(values.values()),
        ).fetchone()
        assert row is not None
        ids = self.db.execute(
            "select id from edit_requests where batch_id = %s order by array_position(%s, input_paths[1])",
            (row["id"], paths),
        ).fetchall()
        return row["id"], [r["id"] for r in ids]

    def cancel_batch(self, batch_id: uuid.UUID) -> int:
        row = self.db.execute("select cancel_edit_batch(%s) as n", (batch_id,)).fetchone()
        assert row is not None
        return int(row["n"])

    def progress(self, batch_id: uuid.UUID) -> tuple[dict[str, int], int, float]:
        row = self.db.execute("select * from edit_batch_progress where id = %s", (batch_id,)).fetchone()
        assert row is not None
        statuses = ("awaiting_image", "queued", "processing", "succeeded", "failed", "canceled")
        return {s: row[s] for s in statuses if row[s]}, row["finished"], row["progress"]

    def statuses(self, ids: list[uuid.UUID]) -> list[str]:
        return [
            str(r["status"])
            for r in self.db.execute(
                "select status from edit_requests where id = any(%s) order by array_position(%s, id)",
                (ids, ids),
            ).fetchall()
        ]


@dataclass
class MemoryBackend:
    queue: InMemoryJobQueue

    def enqueue_batch(self, count: int, **columns: Any) -> tuple[uuid.UUID, list[uuid.UUID]]:
        paths = [f"{OWNER}/{uuid.uuid4()}.png" for _ in range(count)]
        return self.queue.enqueue_batch("make it blue", paths, user_id=OWNER, **columns)

    def cancel_batch(self, batch_id: uuid.UUID) -> int:
        return self.queue.cancel_batch(batch_id)

    def progress(self, batch_id: uuid.UUID) -> tuple[dict[str, int], int, float]:
        batch = self.queue.batch(batch_id)
        return {s: n for s, n in batch.counts.items() if n}, batch.finished, batch.progress

    def statuses(self, ids: list[uuid.UUID]) -> list[str]:
        return [self.queue.row(request_id).status for request_id in ids]


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.database), "memory"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "postgres":
        request.getfixturevalue("add_request")  # makes the OWNER user
        yield PostgresBackend(
            PostgresJobQueue(request.getfixturevalue("database_url")), request.getfixturevalue("db")
        )
    else:
        yield MemoryBackend(InMemoryJobQueue())


def run(backend: Backend, scenario: Callable[[JobQueue], Any]) -> Any:
    async def main() -> Any:
        await backend.queue.open()
        try:
            return await scenario(backend.queue)
        finally:
            await backend.queue.close()

    return asyncio.run(main())


def test_a_batchs_requests_live_on_their_own_and_the_batch_cancels_the_rest(backend: Backend) -> None:
    batch, ids = backend.enqueue_batch(4, num_inference_steps=8, seed=3)
    assert backend.progress(batch) == ({"queued": 4}, 0, 0.0)

    async def scenario(queue: JobQueue) -> None:
        first = await queue.claim("worker-1", LEASE)
        second = await queue.claim("worker-2", LEASE)
        assert first is not None and second is not None and first.id != second.id
        assert {first.id, second.id} <= set(ids)
        assert (first.params.num_inference_steps, first.params.seed) == (8, 3)
        assert (second.params.num_inference_steps, second.params.seed) == (8, 3)
        assert (
            await queue.fail(first.id, "worker-1", "bad", retryable=False, error_code="truncated_image")
            == "failed"
        )
        assert await queue.complete(second.id, "worker-2", "out.png", {"seed": 3})
        third = await queue.claim("worker-1", LEASE)
        assert third is not None and third.id not in (first.id, second.id)
        assert await queue.heartbeat(third.id, "worker-1", 0.5, LEASE) == "ok"

    run(backend, scenario)
    counts, finished, progress = backend.progress(batch)
    assert counts == {"failed": 1, "succeeded": 1, "processing": 1, "queued": 1} and finished == 2
    assert progress == pytest.approx((1 + 1 + 0.5 + 0) / 4)

    assert backend.cancel_batch(batch) == 2
    assert sorted(backend.statuses(ids)) == ["canceled", "canceled", "failed", "succeeded"]
    assert backend.progress(batch) == ({"failed": 1, "succeeded": 1, "canceled": 2}, 4, 1.0)
    assert backend.cancel_batch(batch) == 0


def test_a_bad_batch_leaves_nothing(backend: Backend) -> None:
    with pytest.raises(
        (ValueError, psycopg.errors.CheckViolation),
        match=r"edit_requests_steps_(range|within_rules)|num_inference_steps must be",
    ):
        backend.enqueue_batch(3, num_inference_steps=200)

    async def scenario(queue: JobQueue) -> None:
        assert await queue.claim("worker-1", LEASE) is None

    run(backend, scenario)
