"""The worker's edge cases on the in-memory adapters, in milliseconds: no database, no HTTP, no model.

The queue's clock stands still (``ManualClock``), so no lease lapses unless a test moves it; the
stand-in editor holds an edit on threading events, so "mid-edit" is a moment, not a sleep.
The same adapters pass the ports' conformance tests against the real ones.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from PIL import Image

from processor.core.worker import Worker
from processor.core.worker.heartbeat import Heartbeat
from processor.core.worker.job import ActiveJob
from processor.domain.errors import ModelError
from processor.observability.metrics import Metrics
from processor.testing import (
    InMemoryJobQueue,
    InMemoryObjectStorage,
    ManualClock,
    StandInEditor,
    eventually,
    fast_config,
    running_worker,
)
from tests.conftest import DEADLINE

T = TypeVar("T")
INPUTS = "edit-inputs"
OUTPUTS = "edit-outputs"
USER = uuid.UUID("00000000-0000-4000-8000-0000000000aa")


def png(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


class World:
    """A queue, a storage and a clock, with a request helper."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.storage = InMemoryObjectStorage(clock=self.clock)
        self.queue = InMemoryJobQueue(clock=self.clock, storage=self.storage)
        self.metrics = Metrics()

    def request(self, **columns: Any) -> uuid.UUID:
        request_id = uuid.uuid4()
        path = f"{USER}/{request_id}.png"
        self.storage.put(INPUTS, path, png())
        columns.setdefault("num_inference_steps", 4)
        return self.queue.enqueue("make it blue", [path], id=request_id, user_id=USER, **columns)

    def status(self, request_id: uuid.UUID) -> str:
        return self.queue.row(request_id).status

    async def reaches(self, request_id: uuid.UUID, *statuses: str) -> None:
        await eventually(
            lambda: self.status(request_id) in statuses,
            what=f"{request_id} to reach {statuses}",
            timeout=DEADLINE,
        )

    def jobs(self, outcome: str, reason: str) -> float:
        return sample(self.metrics.jobs, "edit_processor_jobs_total", outcome=outcome, reason=reason)

    def stage_count(self, stage: str) -> float:
        return sample(self.metrics.stage_seconds, "edit_processor_stage_seconds_count", stage=stage)

    def writes_by(self, worker_id: str) -> list[str]:
        return [
            c.name
            for c in self.queue.calls
            if c.worker_id == worker_id and c.name in ("complete", "fail", "release")
        ]


def sample(metric: Any, name: str, **labels: str) -> float:
    """One sample of one metric (not ``registry.get_sample_value``: that scrapes the GPU
    collector too, which imports torch, seconds on a first call)."""
    for family in metric.collect():
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), timeout=DEADLINE))


@pytest.fixture
def world() -> World:
    return World()


def test_a_request_is_edited_stored_and_completed(world: World) -> None:
    editor = StandInEditor()

    async def scenario() -> None:
        request_id = world.request(seed=7)
        async with running_worker(world.queue, world.storage, editor, metrics=world.metrics):
            await world.reaches(request_id, "succeeded")
        row = world.queue.row(request_id)
        assert row.output_path == f"{USER}/{request_id}.png"
        assert row.progress == 1.0 and row.attempts == 1
        assert row.result is not None and row.result["seed"] == 7 and "attempt" not in row.result
        stored = world.storage.get(OUTPUTS, row.output_path)
        assert stored is not None and stored.content_type == "image/png"
        assert Image.open(io.BytesIO(stored.data)).size == (40, 30)

    run(scenario)
    assert world.jobs("succeeded", "ok") == 1


def test_drain_lets_a_job_finish_within_the_grace_period(world: World) -> None:
    editor = StandInEditor(hold_at=1)

    async def scenario() -> None:
        request_id = world.request()
        stop = asyncio.Event()
        await world.queue.open()
        await world.storage.open()
        worker = Worker(
            queue=world.queue,
            storage=world.storage,
            editor=editor,
            config=fast_config(shutdown_grace_seconds=5),
        )
        running = asyncio.create_task(worker.run(stop))
        await world.reaches(request_id, "processing")
        assert await asyncio.to_thread(editor.held.wait, DEADLINE)
        stop.set()
        # Draining: no new claims, the lease still kept.
        later = world.request()
        beats = len(world.queue.calls_to("heartbeat", request_id))
        await eventually(
            lambda: len(world.queue.calls_to("heartbeat", request_id)) > beats,
            what="a heartbeat while draining",
            timeout=DEADLINE,
        )
        editor.proceed.set()
        await running
        assert world.status(request_id) == "succeeded"
        assert world.status(later) == "queued"

    run(scenario)


def test_drain_past_the_grace_period_releases_the_job(world: World) -> None:
    editor = StandInEditor(hold_at=1)

    async def scenario() -> None:
        request_id = world.request()
        async with running_worker(
            world.queue,
            world.storage,
            editor,
            fast_config(shutdown_grace_seconds=0.02),
            metrics=world.metrics,
        ):
            assert await asyncio.to_thread(editor.held.wait, DEADLINE)
        row = world.queue.row(request_id)
        assert (row.status, row.attempts, row.claimed_by) == ("queued", 0, None)
        assert editor.canceled.is_set()
        assert not world.storage.paths(OUTPUTS)

    run(scenario)
    assert world.jobs("released", "shutdown") == 1


def test_progress_is_sent_at_most_once_per_progress_interval(world: World) -> None:
    editor = StandInEditor(step_seconds=0.005)
    config = fast_config(heartbeat_interval_seconds=10, progress_interval_seconds=0.04)

    async def scenario() -> None:
        request_id = world.request(num_inference_steps=40)
        async with running_worker(world.queue, world.storage, editor, config):
            await world.reaches(request_id, "succeeded")
        beats = world.queue.calls_to("heartbeat", request_id)
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(beats)]
        progress = [beat.args["progress"] for beat in beats]
        # 40 steps of 5 ms report progress 40 times; the heartbeats carrying it are 40 ms apart
        # or more (unthrottled they would follow each step, 5 ms apart).
        assert len(beats) >= 2, beats
        assert all(gap >= 0.04 * 0.9 for gap in gaps), gaps
        assert progress == sorted(progress) and 0 < progress[-1] <= 0.95

    run(scenario)


def test_a_lost_lease_is_abandoned_without_writing(world: World) -> None:
    editor = StandInEditor(hold_at=1)

    async def scenario() -> None:
        request_id = world.request()
        async with running_worker(world.queue, world.storage, editor, metrics=world.metrics):
            assert await asyncio.to_thread(editor.held.wait, DEADLINE)
            # The worker looked dead for a lease: another one took the row.
            world.clock.advance(fast_config().lease_seconds + 1)
            await world.queue.claim("other-worker", 60, request_id)
            assert await asyncio.to_thread(editor.canceled.wait, DEADLINE)
            await eventually(
                lambda: world.jobs("lost", "lease_lost") == 1, what="the job to end lost", timeout=DEADLINE
            )
        row = world.queue.row(request_id)
        assert (row.status, row.claimed_by, row.attempts) == ("processing", "other-worker", 2)
        assert world.writes_by("test-worker") == []
        assert [call[0] for call in world.storage.calls] == ["download"]

    run(scenario)


@pytest.mark.parametrize("heard_by", ["notification", "heartbeat"])
def test_cancel_mid_edit_stops_the_model_and_writes_nothing(world: World, heard_by: str) -> None:
    editor = StandInEditor(hold_at=1)
    # Without wake-ups the cancel is heard from the next heartbeat's answer.
    listening = heard_by == "notification"
    config = fast_config(heartbeat_interval_seconds=0.05 if not listening else 10)

    async def scenario() -> None:
        request_id = world.request()
        async with running_worker(
            world.queue, world.storage, editor, config, metrics=world.metrics, wakeups=listening
        ):
            assert await asyncio.to_thread(editor.held.wait, DEADLINE)
            assert world.queue.cancel(request_id)
            assert await asyncio.to_thread(editor.canceled.wait, DEADLINE)
            await eventually(
                lambda: world.jobs("canceled", "canceled") == 1,
                what="the job to end canceled",
                timeout=DEADLINE,
            )
        assert world.status(request_id) == "canceled"
        assert world.writes_by("test-worker") == []
        assert not world.storage.paths(OUTPUTS)

    run(scenario)


def test_failures_are_retried_with_back_off_or_final(world: World) -> None:
    editor = StandInEditor()
    editor.fail_next(ModelError("CUDA error: an illegal memory access", reason="model_error"))

    async def scenario() -> None:
        flaky = world.request()
        async with running_worker(world.queue, world.storage, editor, metrics=world.metrics):
            await eventually(
                lambda: world.queue.row(flaky).error_code == "model_error",
                what="the failure",
                timeout=DEADLINE,
            )
            row = world.queue.row(flaky)
            assert (row.status, row.attempts) == ("queued", 1)
            # The back-off ends; the sweep makes the row due and the worker runs it again.
            world.clock.advance(13)
            await world.reaches(flaky, "succeeded")
        assert world.queue.row(flaky).attempts == 2

    run(scenario)
    assert world.jobs("retrying", "model_error") == 1
    assert world.jobs("succeeded", "ok") == 1


def test_a_missing_input_fails_the_request_for_good(world: World) -> None:
    async def scenario() -> None:
        request_id = world.request()
        world.storage.delete(INPUTS, world.queue.row(request_id).input_paths[0])
        async with running_worker(world.queue, world.storage, StandInEditor(), metrics=world.metrics):
            await world.reaches(request_id, "failed")
        assert world.queue.row(request_id).error_code == "missing_object"

    run(scenario)
    assert world.jobs("failed", "missing_object") == 1


def test_a_storage_outage_on_upload_is_retried_later(world: World) -> None:
    async def scenario() -> None:
        request_id = world.request()
        world.storage.faults.fail_next(1, "upload")
        async with running_worker(world.queue, world.storage, StandInEditor(), metrics=world.metrics):
            await eventually(
                lambda: world.queue.row(request_id).error_code == "storage_unavailable", timeout=DEADLINE
            )
        assert world.status(request_id) == "queued"

    run(scenario)
    assert world.jobs("retrying", "storage_unavailable") == 1


def test_slots_run_jobs_side_by_side_up_to_the_concurrency(world: World) -> None:
    editor = StandInEditor(hold_at=1)

    async def scenario() -> None:
        first, second, third = world.request(), world.request(), world.request()
        async with running_worker(world.queue, world.storage, editor, fast_config(worker_concurrency=2)):
            await eventually(
                lambda: (
                    [world.status(r) for r in (first, second, third)]
                    == ["processing", "processing", "queued"]
                ),
                timeout=DEADLINE,
            )
            editor.proceed.set()
            for request_id in (first, second, third):
                await world.reaches(request_id, "succeeded")

    run(scenario)


def test_a_dead_workers_lapsed_lease_is_recovered(world: World) -> None:
    async def scenario() -> None:
        request_id = world.request()
        await world.queue.open()
        await world.queue.claim("dead-worker", 30)
        world.clock.advance(31)
        async with running_worker(world.queue, world.storage, StandInEditor()):
            await world.reaches(request_id, "succeeded")
        row = world.queue.row(request_id)
        assert (row.claimed_by, row.attempts) == ("test-worker", 2)
        assert row.output_path == f"{USER}/{request_id}.png"

    run(scenario)


def test_a_request_waits_for_its_input_then_runs(world: World) -> None:
    async def scenario() -> None:
        path = f"{USER}/later.png"
        request_id = world.queue.enqueue("make it blue", [path], user_id=USER, num_inference_steps=2)
        assert world.status(request_id) == "awaiting_image"
        async with running_worker(world.queue, world.storage, StandInEditor()):
            world.storage.put(INPUTS, path, png())  # the app's upload queues it and wakes the worker
            await world.reaches(request_id, "succeeded")

    run(scenario)


def test_each_job_records_stage_total_once(world: World) -> None:
    """Defect: ``stage_seconds{stage="total"}`` was recorded twice per job, the editor's total and the job's."""

    async def scenario() -> None:
        first, second = world.request(), world.request()
        async with running_worker(world.queue, world.storage, StandInEditor(), metrics=world.metrics):
            await world.reaches(first, "succeeded")
            await world.reaches(second, "succeeded")
        await eventually(lambda: world.jobs("succeeded", "ok") == 2, timeout=DEADLINE)

    run(scenario)
    # "total" is the job's wall time from claim to end; the editor call is "edit", once each.
    assert world.stage_count("total") == 2
    assert world.stage_count("edit") == 2
    assert world.stage_count("denoising") == 2


def test_a_cancelled_job_releases_its_row_and_lets_the_cancellation_through(world: World) -> None:
    """Defect: the worker swallowed ``CancelledError`` after releasing a job, so a caller that
    cancelled ``run_one`` (or the drain's hard stop) saw an ordinary return."""
    editor = StandInEditor(hold_at=1)

    async def scenario() -> None:
        request_id = world.request()
        await world.queue.open()
        await world.storage.open()
        worker = Worker(
            queue=world.queue,
            storage=world.storage,
            editor=editor,
            config=fast_config(),
            metrics=world.metrics,
        )
        task = asyncio.create_task(worker.run_one(request_id))
        try:
            assert await asyncio.to_thread(editor.held.wait, DEADLINE)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            editor.proceed.set()  # never leave the model thread waiting
        row = world.queue.row(request_id)
        assert (row.status, row.attempts, row.claimed_by) == ("queued", 0, None)
        assert not worker.busy
        # The model is told to stop too, rather than running on for a row given back.
        assert await asyncio.to_thread(editor.canceled.wait, DEADLINE)
        assert editor.canceled.is_set()

    run(scenario)
    assert world.jobs("released", "shutdown") == 1


@pytest.mark.parametrize("ticks", [0, 1, 2])
def test_a_heartbeat_cancelled_just_as_progress_arrives_still_ends(ticks: int) -> None:
    # Python 3.11's asyncio.wait_for returned normally when the cancellation came in the same tick
    # as the progress event, and the loop went on beating for a job that had ended.
    world = World()
    world.request()

    async def main() -> bool:
        await world.queue.open()
        job = await world.queue.claim("test-worker", 30)
        assert job is not None
        active = ActiveJob(job=job, loop=asyncio.get_running_loop())
        config = fast_config(heartbeat_interval_seconds=3600.0, progress_interval_seconds=0.0)
        task = asyncio.create_task(Heartbeat(world.queue, config).run(active))
        for _ in range(3):
            await asyncio.sleep(0)
        active.progress_changed.set()
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        if not done:
            task.cancel()
            await asyncio.wait([task])
        return bool(done)

    assert asyncio.run(main())
