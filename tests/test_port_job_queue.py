"""Conformance of the ``JobQueue`` port: the same behaviour from ``PostgresJobQueue`` on the real
database and from ``InMemoryJobQueue`` (the stand-in users' tests and the fast worker tests rely on).

Each backend supplies the queue and the few things only a test does: insert a request, cancel
it, read its row, and let time pass (a lease lapses, a back-off ends). In SQL that is an UPDATE
of the timestamps; in memory the clock moves.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import pytest

from processor.adapters.memory.queue import backoff_seconds
from processor.adapters.postgres.queue import PostgresJobQueue
from processor.adapters.postgres.requests import request_columns
from processor.domain.errors import TransientError
from processor.domain.ports.queue import JobQueue
from processor.domain.request import PARAM_FIELDS, EditParams, example_params
from processor.domain.rules import (
    REQUEST_BACKOFF_JITTER,
    REQUEST_BACKOFF_MAX_SECONDS,
    request_backoff_seconds,
)
from processor.domain.speed import LoraChoice
from processor.testing import InMemoryJobQueue, ManualClock
from tests.conftest import OWNER

Row = dict[str, Any]
LEASE = 60
PARAM_NAMES = frozenset(item.name for item in PARAM_FIELDS)


class Backend(Protocol):
    queue: JobQueue

    def enqueue(self, **columns: Any) -> uuid.UUID: ...

    def cancel(self, request_id: uuid.UUID) -> bool: ...

    def state(self, request_id: uuid.UUID) -> Row:
        """status, attempts, claimed_by, progress, error, error_code, output_path, result,
        and ``lease_left``/``backoff_left``: seconds from now (None when unset)."""
        ...

    def lapse_leases(self) -> None:
        """Time passes beyond every running lease."""
        ...

    def end_backoffs(self) -> None:
        """Time passes beyond every retry's back-off."""
        ...


STATE_COLUMNS = (
    "status",
    "attempts",
    "claimed_by",
    "progress",
    "error",
    "error_code",
    "output_path",
    "result",
    "preview_path",
    "preview_step",
)


@dataclass
class PostgresBackend:
    queue: PostgresJobQueue
    db: psycopg.Connection[Row]
    add_request: Callable[..., uuid.UUID]

    def enqueue(self, **columns: Any) -> uuid.UUID:
        # The request's fields in their columns, as the users' insert writes them (LoRAs as jsonb).
        request = {name: columns.pop(name) for name in PARAM_NAMES if name in columns}
        if request:
            params = EditParams(**{"prompt": "make it blue", **request})
            columns.update({k: v for k, v in request_columns(params).items() if k in request})
        return self.add_request(**columns)

    def cancel(self, request_id: uuid.UUID) -> bool:
        row = self.db.execute("select cancel_edit_request(%s) as done", (request_id,)).fetchone()
        return bool(row and row["done"])

    def state(self, request_id: uuid.UUID) -> Row:
        row = self.db.execute(
            f"select {', '.join(STATE_COLUMNS)}, "
            "extract(epoch from lease_expires_at - now())::float as lease_left, "
            "extract(epoch from next_attempt_at - now())::float as backoff_left "
            "from edit_requests where id = %s",
            (request_id,),
        ).fetchone()
        assert row is not None
        return dict(row)

    def lapse_leases(self) -> None:
        self.db.execute(
            "update edit_requests set lease_expires_at = now() - interval '1 second' where status = 'processing'"
        )

    def end_backoffs(self) -> None:
        self.db.execute(
            "update edit_requests set next_attempt_at = now() - interval '1 second' where next_attempt_at is not null"
        )


@dataclass
class MemoryBackend:
    queue: InMemoryJobQueue
    clock: ManualClock

    def enqueue(self, **columns: Any) -> uuid.UUID:
        return self.queue.enqueue(user_id=OWNER, **columns)

    def cancel(self, request_id: uuid.UUID) -> bool:
        return self.queue.cancel(request_id)

    def state(self, request_id: uuid.UUID) -> Row:
        row = self.queue.row(request_id)
        now = self.clock()
        return {
            **{name: getattr(row, name) for name in STATE_COLUMNS},
            "lease_left": (row.lease_expires_at - now).total_seconds() if row.lease_expires_at else None,
            "backoff_left": (row.next_attempt_at - now).total_seconds() if row.next_attempt_at else None,
        }

    def lapse_leases(self) -> None:
        self.clock.advance(LEASE + 1)

    def end_backoffs(self) -> None:
        self.clock.advance(REQUEST_BACKOFF_MAX_SECONDS * (1 + REQUEST_BACKOFF_JITTER) + 1)


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.database), "memory"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "postgres":
        db = request.getfixturevalue("db")
        # The LoRAs the examples name, allowlisted (the insert trigger refuses others).
        db.execute("insert into edit_loras (name) values ('detail'), ('ink')")
        yield PostgresBackend(
            PostgresJobQueue(request.getfixturevalue("database_url")),
            db,
            request.getfixturevalue("add_request"),
        )
    else:
        clock = ManualClock()
        yield MemoryBackend(InMemoryJobQueue(clock=clock), clock)


def run(backend: Backend, scenario: Callable[[JobQueue], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        await backend.queue.open()
        try:
            return await scenario(backend.queue)
        finally:
            await backend.queue.close()

    return asyncio.run(main())


# --- Claim --------------------------------------------------------------------------------------------
def test_the_request_comes_back_whole(backend: Backend) -> None:
    # Every field of the request at a value other than its default (derived from the declaration,
    # so a new field is in it): the claimed job hands it back unchanged.
    sent = example_params()
    request_id = backend.enqueue(**{item.name: getattr(sent, item.name) for item in PARAM_FIELDS})

    async def scenario(queue: JobQueue) -> Any:
        return await queue.claim("w1", LEASE)

    job = run(backend, scenario)
    assert job is not None and job.id == request_id
    assert job.params == sent


def test_speed_and_loras_go_in_and_come_back(backend: Backend) -> None:
    # InMemoryJobQueue.enqueue(speed=...) once raised TypeError, and every job it handed out had
    # speed None and no LoRAs.
    request_id = backend.enqueue(speed="fast", loras=(LoraChoice("ink", 0.5), LoraChoice("detail")))

    async def scenario(queue: JobQueue) -> Any:
        return await queue.claim("w1", LEASE)

    job = run(backend, scenario)
    assert job is not None and job.id == request_id
    assert (job.params.speed, job.params.loras) == ("fast", (LoraChoice("ink", 0.5), LoraChoice("detail")))


def test_a_request_is_claimed_once(backend: Backend) -> None:
    request_id = backend.enqueue(seed=5, num_inference_steps=12, width=512, height=384)

    async def scenario(queue: JobQueue) -> Any:
        return await queue.claim("w1", LEASE), await queue.claim("w2", LEASE)

    job, second = run(backend, scenario)
    assert second is None
    assert job is not None
    assert (job.id, job.user_id, job.params.prompt, job.params.seed, job.params.num_inference_steps) == (
        request_id,
        OWNER,
        "make it blue",
        5,
        12,
    )
    assert (job.attempts, job.max_attempts, job.input_bucket, job.output_bucket) == (
        1,
        3,
        "edit-inputs",
        "edit-outputs",
    )
    assert (job.params.width, job.params.height, job.params.base, job.params.base_color) == (
        512,
        384,
        "blank",
        "#ffffff",
    )
    assert job.input_paths == (f"{OWNER}/{request_id}.png",) and job.created_at is not None
    state = backend.state(request_id)
    assert (state["status"], state["claimed_by"], state["attempts"]) == ("processing", "w1", 1)
    assert LEASE - 5 < state["lease_left"] <= LEASE


def test_claims_follow_priority_then_age(backend: Backend) -> None:
    first, urgent, second = backend.enqueue(), backend.enqueue(priority=5), backend.enqueue()

    async def scenario(queue: JobQueue) -> list[Any]:
        jobs = [await queue.claim("w1", LEASE) for _ in range(4)]
        return [job.id if job else None for job in jobs]

    assert run(backend, scenario) == [urgent, first, second, None]


def test_claim_by_id_takes_only_that_request(backend: Backend) -> None:
    backend.enqueue(priority=9)
    wanted = backend.enqueue()

    async def scenario(queue: JobQueue) -> list[Any]:
        job = await queue.claim("w1", LEASE, wanted)
        again = await queue.claim("w2", LEASE, wanted)
        return [job.id if job else None, again]

    assert run(backend, scenario) == [wanted, None]


def test_claiming_ahead_leaves_the_front_of_the_queue_to_idle_workers(backend: Backend) -> None:
    """A busy worker claims its next job ahead only past one due row per idle worker (issue #21: a
    prefetched job must not wait behind a busy worker while another worker is idle)."""

    async def scenario(queue: JobQueue) -> list[Any]:
        assert await queue.claim("idle", LEASE) is None  # found nothing: idle
        first, second = backend.enqueue(), backend.enqueue()
        ahead = await queue.claim_ahead("busy", LEASE, 60)
        again = await queue.claim_ahead("busy", LEASE, 60)  # the first is still the idle worker's
        taken = await queue.claim("idle", LEASE)  # busy again: it no longer counts
        third = backend.enqueue()
        later = await queue.claim_ahead("busy", LEASE, 60)
        return [first, second, third, ahead and ahead.id, again, taken and taken.id, later and later.id]

    first, second, third, ahead, again, taken, later = run(backend, scenario)
    assert (ahead, again, taken, later) == (second, None, first, third)
    state = backend.state(second)
    assert (state["status"], state["claimed_by"], state["attempts"]) == ("processing", "busy", 1)
    assert LEASE - 5 < state["lease_left"] <= LEASE


def test_claiming_ahead_counts_only_recently_idle_workers_other_than_itself(backend: Backend) -> None:
    async def scenario(queue: JobQueue) -> list[Any]:
        assert await queue.claim("gone", LEASE) is None
        assert await queue.claim("busy", LEASE) is None  # its own idleness never holds it back
        request_id = backend.enqueue()
        # "gone" was idle, but not within the last 0 seconds: it may have stopped since.
        job = await queue.claim_ahead("busy", LEASE, 0)
        return [request_id, job and job.id]

    request_id, claimed = run(backend, scenario)
    assert claimed == request_id


def test_a_job_claimed_ahead_is_fenced_and_canceled_like_any_other(backend: Backend) -> None:
    request_id = backend.enqueue()

    async def scenario(queue: JobQueue) -> list[Any]:
        job = await queue.claim_ahead("w1", LEASE, 60)
        assert job is not None
        answers: list[Any] = [await queue.heartbeat(request_id, "w1", 0.1, LEASE)]
        answers.append(await queue.heartbeat(request_id, "w2", 0.1, LEASE))
        backend.cancel(request_id)
        answers.append(await queue.heartbeat(request_id, "w1", 0.2, LEASE))
        answers.append(await queue.complete(request_id, "w1", "u/x.png", {}))
        return answers

    assert run(backend, scenario) == ["ok", "lost", "canceled", False]
    assert backend.state(request_id)["status"] == "canceled"


# --- Heartbeat and fencing ----------------------------------------------------------------------------
def test_heartbeat_extends_the_lease_and_keeps_progress_monotonic(backend: Backend) -> None:
    request_id = backend.enqueue()

    async def scenario(queue: JobQueue) -> list[Any]:
        await queue.claim("w1", 5)
        answers = [await queue.heartbeat(request_id, "w1", 0.5, LEASE)]
        answers.append(await queue.heartbeat(request_id, "w1", 0.3, LEASE))  # late, lower: ignored
        progress = [backend.state(request_id)["progress"]]
        answers.append(await queue.heartbeat(request_id, "w1", None, LEASE))  # lease only
        answers.append(await queue.heartbeat(request_id, "w1", 7.0, LEASE))  # clamped to 1
        progress.append(backend.state(request_id)["progress"])
        return [answers, progress]

    answers, progress = run(backend, scenario)
    assert answers == ["ok", "ok", "ok", "ok"]
    assert progress == [pytest.approx(0.5), pytest.approx(1.0)]
    assert backend.state(request_id)["lease_left"] > 5


def test_a_still_heartbeat_with_lease_to_spare_writes_nothing_and_a_short_lease_is_renewed(
    backend: Backend,
) -> None:
    still, short = backend.enqueue(), backend.enqueue()

    async def scenario(queue: JobQueue) -> list[Any]:
        await queue.claim("w1", LEASE, still)
        await queue.heartbeat(still, "w1", 0.4, LEASE)
        before = backend.state(still)["lease_left"]
        answer = await queue.heartbeat(still, "w1", 0.4, LEASE)  # still, lease to spare: no write
        after = backend.state(still)["lease_left"]
        await queue.claim("w1", 10, short)  # less than half of the next heartbeat's lease left
        renewed = await queue.heartbeat(short, "w1", None, LEASE)
        return [answer, before, after, renewed, backend.state(short)["lease_left"]]

    answer, before, after, renewed, left = run(backend, scenario)
    assert answer == "ok" and after <= before  # the lease was not extended: the row was not written
    assert renewed == "ok" and left > LEASE / 2


def test_heartbeat_answers_lost_and_canceled(backend: Backend) -> None:
    request_id = backend.enqueue()

    async def scenario(queue: JobQueue) -> list[str]:
        await queue.claim("w1", LEASE)
        answers = [await queue.heartbeat(request_id, "someone-else", 0.1, LEASE)]
        assert backend.cancel(request_id)
        answers.append(await queue.heartbeat(request_id, "w1", 0.2, LEASE))
        answers.append(await queue.heartbeat(uuid.uuid4(), "w1", 0.2, LEASE))
        return answers

    assert run(backend, scenario) == ["lost", "canceled", "lost"]
    assert backend.state(request_id)["status"] == "canceled"


def test_a_lapsed_lease_is_claimed_again_and_fences_the_old_owner(backend: Backend) -> None:
    request_id = backend.enqueue()

    async def scenario(queue: JobQueue) -> list[Any]:
        await queue.claim("w1", LEASE)
        backend.lapse_leases()
        job = await queue.claim("w2", LEASE)
        assert job is not None and job.id == request_id
        stale = [
            await queue.heartbeat(request_id, "w1", 0.9, LEASE),
            await queue.complete(request_id, "w1", "u/stale.png", {}),
            await queue.fail(request_id, "w1", "late", retryable=True, error_code="x"),
            await queue.release(request_id, "w1"),
        ]
        return [job.attempts, stale, await queue.complete(request_id, "w2", "u/out.png", {"seed": 1})]

    attempts, stale, completed = run(backend, scenario)
    assert (attempts, stale, completed) == (2, ["lost", False, "lost", False], True)
    state = backend.state(request_id)
    assert (state["status"], state["claimed_by"], state["output_path"]) == ("succeeded", "w2", "u/out.png")


# --- Ends ---------------------------------------------------------------------------------------------
def test_complete_stores_the_result_once(backend: Backend) -> None:
    request_id = backend.enqueue()

    async def scenario(queue: JobQueue) -> list[bool]:
        await queue.claim("w1", LEASE)
        return [
            await queue.complete(request_id, "w1", "u/out.png", {"seed": 5, "timings": {"total": 1.5}}),
            await queue.complete(request_id, "w1", "u/other.png", {}),
        ]

    assert run(backend, scenario) == [True, False]
    state = backend.state(request_id)
    assert (state["status"], state["progress"], state["output_path"]) == ("succeeded", 1.0, "u/out.png")
    assert state["result"] == {"seed": 5, "timings": {"total": 1.5}}
    assert state["lease_left"] is None and state["error_code"] is None


def test_previews_are_the_lease_holders_go_up_end_with_the_job_and_restart_per_attempt(
    backend: Backend,
) -> None:
    request_id = backend.enqueue()
    path = "u/x.preview.webp"

    async def scenario(queue: JobQueue) -> list[object]:
        await queue.claim("w1", LEASE)
        answers: list[object] = [
            await queue.preview(request_id, "w1", path, 2),
            await queue.preview(request_id, "w2", path, 3),  # not the lease holder
            await queue.preview(request_id, "w1", path, 2),  # steps only go up
            await queue.preview(request_id, "w1", path, 4),
        ]
        await queue.fail(request_id, "w1", "flaky", retryable=True, error_code="transient_error")
        answers.append(await queue.preview(request_id, "w1", path, 5))  # requeued: not ours
        answers.append(backend.state(request_id)["preview_step"])
        backend.end_backoffs()
        await queue.claim("w2", LEASE)
        answers.append(backend.state(request_id)["preview_step"])  # a new attempt starts afresh
        answers.append(await queue.preview(request_id, "w2", path, 1))
        await queue.complete(request_id, "w2", "u/out.png", {})
        answers.append(await queue.preview(request_id, "w2", path, 2))  # the job has ended
        return answers

    assert run(backend, scenario) == [True, False, False, True, False, 4, None, True, False]
    # Final: the row no longer points at a preview (edit_requests_reset_preview).
    assert (backend.state(request_id)["preview_path"], backend.state(request_id)["preview_step"]) == (
        None,
        None,
    )


def test_a_retryable_failure_is_queued_with_back_off(backend: Backend) -> None:
    request_id = backend.enqueue()

    async def scenario(queue: JobQueue) -> list[Any]:
        await queue.claim("w1", LEASE)
        status = await queue.fail(
            request_id, "w1", "CUDA out of memory", retryable=True, error_code="out_of_memory"
        )
        during_backoff = await queue.claim("w1", LEASE)
        state = backend.state(request_id)
        backend.end_backoffs()
        again = await queue.claim("w2", LEASE)
        return [status, during_backoff, state, again.attempts if again else None]

    status, during_backoff, state, attempts = run(backend, scenario)
    assert (status, during_backoff, attempts) == ("queued", None, 2)
    assert (state["status"], state["claimed_by"], state["error"], state["error_code"]) == (
        "queued",
        None,
        "CUDA out of memory",
        "out_of_memory",
    )
    assert 7.5 - 1 <= state["backoff_left"] <= 12.5  # 10 s ± 25 % for the first retry


def test_back_off_doubles_with_each_attempt(backend: Backend) -> None:
    request_id = backend.enqueue(max_attempts=5)

    async def scenario(queue: JobQueue) -> list[float]:
        waits = []
        for _ in range(3):
            await queue.claim("w1", LEASE)
            await queue.fail(request_id, "w1", "flaky", retryable=True, error_code="model_error")
            waits.append(backend.state(request_id)["backoff_left"])
            backend.end_backoffs()
        return waits

    first, second, third = run(backend, scenario)
    assert 7.5 - 1 <= first <= 12.5 and 15 - 1 <= second <= 25 and 30 - 1 <= third <= 50


def test_failure_is_final_when_permanent_or_at_max_attempts(backend: Backend) -> None:
    permanent, last = backend.enqueue(), backend.enqueue(max_attempts=1)

    async def scenario(queue: JobQueue) -> list[str]:
        await queue.claim("w1", LEASE, permanent)
        await queue.claim("w1", LEASE, last)
        return [
            await queue.fail(permanent, "w1", "not an image", retryable=False, error_code="unknown_format"),
            await queue.fail(last, "w1", "CUDA out of memory", retryable=True, error_code="out_of_memory"),
            await queue.fail(last, "w1", "again", retryable=True, error_code="x"),
        ]

    assert run(backend, scenario) == ["failed", "failed", "lost"]
    assert backend.state(permanent)["error_code"] == "unknown_format"
    state = backend.state(last)
    assert (state["status"], state["attempts"], state["error"]) == ("failed", 1, "CUDA out of memory")


def test_release_gives_the_attempt_back(backend: Backend) -> None:
    request_id = backend.enqueue()

    async def scenario(queue: JobQueue) -> list[Any]:
        await queue.claim("w1", LEASE)
        released = await queue.release(request_id, "w1")
        state = backend.state(request_id)
        again = await queue.claim("w2", LEASE)
        return [released, state, again.attempts if again else None, await queue.release(request_id, "w1")]

    released, state, attempts, stale = run(backend, scenario)
    assert (released, attempts, stale) == (True, 1, False)
    assert (state["status"], state["attempts"], state["claimed_by"], state["lease_left"]) == (
        "queued",
        0,
        None,
        None,
    )


def test_requeue_expired_recovers_lapsed_leases_and_ends_back_offs(backend: Backend) -> None:
    lapsed, exhausted, retried, running = (
        backend.enqueue(priority=3),
        backend.enqueue(priority=2, max_attempts=1),
        backend.enqueue(priority=1),
        backend.enqueue(),
    )

    async def scenario(queue: JobQueue) -> list[int]:
        for request_id in (lapsed, exhausted, retried):
            await queue.claim("w1", LEASE, request_id)
        await queue.fail(retried, "w1", "flaky", retryable=True, error_code="model_error")
        nothing = await queue.requeue_expired()
        backend.lapse_leases()
        backend.end_backoffs()
        await queue.claim("w2", 10 * LEASE + 1000, running)  # claimed after time passed: still held
        return [nothing, await queue.requeue_expired(), await queue.requeue_expired()]

    assert run(backend, scenario) == [0, 3, 0]
    assert {k: backend.state(lapsed)[k] for k in ("status", "claimed_by", "error_code", "attempts")} == {
        "status": "queued",
        "claimed_by": None,
        "error_code": "lease_expired",
        "attempts": 1,
    }
    assert (backend.state(exhausted)["status"], backend.state(exhausted)["error_code"]) == (
        "failed",
        "lease_expired",
    )
    assert (backend.state(retried)["status"], backend.state(retried)["backoff_left"]) == ("queued", None)
    assert backend.state(running)["status"] == "processing"


def test_cancel_ends_waiting_and_running_requests(backend: Backend) -> None:
    waiting, running = backend.enqueue(), backend.enqueue()

    async def scenario(queue: JobQueue) -> list[Any]:
        await queue.claim("w1", LEASE, running)
        canceled = [backend.cancel(waiting), backend.cancel(running), backend.cancel(running)]
        return [
            canceled,
            await queue.claim("w1", LEASE),
            await queue.complete(running, "w1", "u/out.png", {}),
            await queue.fail(running, "w1", "x", retryable=True, error_code="x"),
        ]

    assert run(backend, scenario) == [[True, True, False], None, False, "lost"]
    assert backend.state(running)["status"] == "canceled"
    assert backend.state(running)["output_path"] is None


def test_stats_count_rows_by_status(backend: Backend) -> None:
    done, running = backend.enqueue(), backend.enqueue()
    backend.enqueue()

    async def scenario(queue: JobQueue) -> Any:
        await queue.claim("w1", LEASE, done)
        await queue.complete(done, "w1", "u/out.png", {})
        await queue.claim("w1", LEASE, running)
        await queue.ping()
        return await queue.stats()

    depth, oldest = run(backend, scenario)
    assert depth == {"succeeded": 1, "processing": 1, "queued": 1}
    assert oldest >= 0.0


@pytest.mark.database
def test_a_fault_is_a_transient_error() -> None:
    """The real queue's outage (nothing listening), and the stand-in's injected one."""

    async def unreachable() -> None:
        async with PostgresJobQueue("postgresql://postgres@127.0.0.1:1/nowhere", timeout=1.0) as queue:
            await queue.claim("w", 60)

    async def injected() -> None:
        queue = InMemoryJobQueue()
        queue.faults.fail_next(1, "claim")
        await queue.open()
        await queue.claim("w", 60)

    for scenario in (unreachable, injected):
        with pytest.raises(TransientError) as caught:
            asyncio.run(scenario())
        assert caught.value.reason == "database_unavailable"


@pytest.mark.parametrize(
    ("columns", "constraint"),
    [
        # The request's own fields: the stand-in names the rule (reason code) where SQL names its CHECK.
        ({"num_inference_steps": 0}, "edit_requests_steps_range|invalid_parameter: num_inference_steps"),
        ({"prompt": ""}, "edit_requests_prompt_length|invalid_prompt: prompt"),
        ({"max_attempts": 0}, "edit_requests_max_attempts_range"),
        ({"priority": 101}, "edit_requests_priority_range"),
        ({"input_paths": ["../escape.png"]}, "edit_requests_input_paths_valid"),
    ],
)
def test_a_row_the_schema_refuses_is_refused(
    backend: Backend, columns: dict[str, Any], constraint: str
) -> None:
    """The stand-in keeps the table's CHECK constraints: a bad state is impossible there too."""
    with pytest.raises((ValueError, psycopg.errors.CheckViolation), match=constraint):
        backend.enqueue(**columns)


def test_the_in_memory_back_off_is_the_databases(db: psycopg.Connection[Row]) -> None:
    # One rule (rules.request_backoff_seconds, ± REQUEST_BACKOFF_JITTER): SQL's edit_request_backoff
    # draws within it, over its whole range, and the stand-in's ends are its ends.
    spread = REQUEST_BACKOFF_JITTER
    for attempts in range(1, 10):
        nominal = request_backoff_seconds(attempts)
        rows = db.execute(
            "select extract(epoch from public.edit_request_backoff(%s))::float as wait "
            "from generate_series(1, 200)",
            (attempts,),
        ).fetchall()
        waits = [float(row["wait"]) for row in rows]
        assert nominal * (1 - spread) - 1e-6 <= min(waits) < nominal * (1 - spread / 2), attempts
        assert nominal * (1 + spread / 2) < max(waits) <= nominal * (1 + spread) + 1e-6, attempts
        assert backoff_seconds(attempts, 0.0) == pytest.approx(nominal * (1 - spread))
        assert backoff_seconds(attempts, 1.0) == pytest.approx(nominal * (1 + spread))
