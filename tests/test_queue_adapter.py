"""Conformance of the ``JobQueue`` port through ``PostgresJobQueue`` (each call is one SQL function)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from processor.adapters.postgres.queue import PostgresJobQueue
from processor.domain.errors import TransientError
from processor.domain.ports import JobQueue

Row = dict[str, Any]


@pytest.fixture
def run_with_queue(database_url: str) -> Callable[..., Any]:
    def run(scenario: Callable[[JobQueue], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            async with PostgresJobQueue(database_url) as queue:
                return await scenario(queue)

        return asyncio.run(main())

    return run


def test_claim_heartbeat_complete(
    run_with_queue: Callable[..., Any], add_request: Callable[..., uuid.UUID], db: psycopg.Connection[Row]
) -> None:
    request_id = add_request(seed=5, num_inference_steps=12)

    async def scenario(queue: JobQueue) -> tuple[Any, ...]:
        job = await queue.claim("w1", 60)
        assert job is not None
        beat = await queue.heartbeat(job.id, "w1", 0.5, 60)
        done = await queue.complete(job.id, "w1", "u/out.png", {"seed": 5})
        again = await queue.complete(job.id, "w1", "u/out.png", {})
        return job, beat, done, again

    job, beat, done, again = run_with_queue(scenario)
    assert (job.id, job.seed, job.num_inference_steps, job.attempts, job.input_bucket) == (
        request_id,
        5,
        12,
        1,
        "edit-inputs",
    )
    assert job.created_at is not None and job.input_paths
    assert (beat, done, again) == ("ok", True, False)
    assert db.execute("select status, result from edit_requests").fetchone() == {
        "status": "succeeded",
        "result": {"seed": 5},
    }


def test_fail_release_and_requeue(
    run_with_queue: Callable[..., Any], add_request: Callable[..., uuid.UUID], db: psycopg.Connection[Row]
) -> None:
    retry, permanent, released, expired = (add_request(priority=p) for p in (4, 3, 2, 1))

    async def scenario(queue: JobQueue) -> list[Any]:
        results: list[Any] = []
        for request_id in (retry, permanent, released, expired):
            job = await queue.claim("w1", 60, request_id)
            assert job is not None
            if job.id == retry:
                results.append(
                    await queue.fail(job.id, "w1", "flaky", retryable=True, error_code="model_error")
                )
            elif job.id == permanent:
                results.append(
                    await queue.fail(job.id, "w1", "bad", retryable=False, error_code="unknown_format")
                )
            elif job.id == released:
                results.append(await queue.release(job.id, "w1"))
        db.execute(
            "update edit_requests set lease_expires_at = now() - interval '1 s' where id = %s", (expired,)
        )
        results.append(await queue.requeue_expired())
        results.append(await queue.fail(permanent, "w1", "late", retryable=True, error_code="x"))
        return results

    assert run_with_queue(scenario) == ["queued", "failed", True, 1, "lost"]


def test_heartbeat_answers_lost_and_canceled(
    run_with_queue: Callable[..., Any], add_request: Callable[..., uuid.UUID], db: psycopg.Connection[Row]
) -> None:
    add_request()

    async def scenario(queue: JobQueue) -> tuple[str, str]:
        job = await queue.claim("w1", 60)
        assert job is not None
        lost = await queue.heartbeat(job.id, "someone-else", 0.1, 60)
        db.execute("select cancel_edit_request(%s)", (job.id,))
        canceled = await queue.heartbeat(job.id, "w1", 0.2, 60)
        return lost, canceled

    assert run_with_queue(scenario) == ("lost", "canceled")


def test_unreachable_database_is_a_transient_error() -> None:
    async def scenario() -> None:
        async with PostgresJobQueue("postgresql://postgres@127.0.0.1:1/nowhere", timeout=1.0) as queue:
            await queue.claim("w", 60)

    with pytest.raises(TransientError) as caught:
        asyncio.run(scenario())
    assert caught.value.reason == "database_unavailable"
