"""Claiming ahead, just in time (issue #21): the next job is claimed, downloaded, decoded and prepared
while the current edit's last steps run; never while another worker is idle; its lease kept, and a
cancel before it starts frees it at once. And the GPU turn ends with the edit: the output's upload
overlaps the next edit.

The in-memory adapters for the worker's own behaviour; the real PostgreSQL queue with two worker
instances for "the idle worker gets it".
"""

from __future__ import annotations

import asyncio
import io
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import psycopg
import pytest
from PIL import Image

from processor.adapters.postgres.queue import PostgresJobQueue
from processor.core.worker import Worker
from processor.core.worker.job import ActiveJob
from processor.core.worker.pacing import Pacing
from processor.domain.ports.queue import EditJob
from processor.domain.request import EditParams
from processor.testing import (
    InMemoryJobQueue,
    InMemoryObjectStorage,
    ManualClock,
    StandInEditor,
    eventually,
    fast_config,
    running_worker,
)
from tests.conftest import DEADLINE, OWNER

T = TypeVar("T")
INPUTS = "edit-inputs"
Row = dict[str, Any]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), timeout=DEADLINE))


class World:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.storage = InMemoryObjectStorage(clock=self.clock)
        self.queue = InMemoryJobQueue(clock=self.clock, storage=self.storage)

    def request(self, steps: int = 8) -> uuid.UUID:
        request_id = uuid.uuid4()
        path = f"{OWNER}/{request_id}.png"
        self.storage.put(INPUTS, path, png())
        return self.queue.enqueue(
            "make it blue", [path], id=request_id, user_id=OWNER, num_inference_steps=steps
        )

    def status(self, request_id: uuid.UUID) -> str:
        return self.queue.row(request_id).status

    def calls(self, name: str, job_id: uuid.UUID | None = None) -> int:
        return sum(1 for c in self.queue.calls if c.name == name and (job_id is None or c.job_id == job_id))


class RecordingEditor(StandInEditor):
    """A stand-in that records which request each edit was for, in order (by its seed)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seeds: list[int | None] = []

    def edit(self, images: Sequence[Image.Image], params: EditParams, **options: Any) -> Any:
        self.seeds.append(params.seed)
        return super().edit(images, params, **options)


def test_the_next_job_is_claimed_and_readied_while_the_last_steps_run() -> None:
    world = World()
    editor = StandInEditor(hold_at=7, step_seconds=0.01)  # 8 steps: held with one left

    async def scenario() -> None:
        first, second = world.request(), world.request()
        async with running_worker(world.queue, world.storage, editor) as worker:
            await asyncio.to_thread(editor.held.wait, DEADLINE)
            # While the first edit is held at its seventh step, the second is claimed ahead and made
            # ready (downloaded and decoded), but not edited: the GPU is the first's.
            await eventually(
                lambda: world.status(second) == "processing", what="the claim ahead", timeout=DEADLINE
            )
            jobs = {job.job.id: job for job in worker._slots.jobs}
            await eventually(
                lambda: jobs[second].ready_at is not None, what="the second job to be ready", timeout=DEADLINE
            )
            assert world.calls("claim_ahead") >= 1 and editor.calls == 1
            assert not jobs[second].has_turn and jobs[first].has_turn
            # Its lease is kept while it waits.
            beats = world.calls("heartbeat", second)
            await eventually(
                lambda: world.calls("heartbeat", second) > beats, what="a heartbeat", timeout=DEADLINE
            )
            editor.proceed.set()
            await eventually(
                lambda: world.status(first) == world.status(second) == "succeeded", timeout=DEADLINE
            )

    run(scenario)
    assert editor.calls == 2


def test_nothing_is_claimed_ahead_while_the_edit_has_long_to_run() -> None:
    world = World()
    # 100 steps of 100 ms: about 10 s left at step 2, far beyond the lead (2.25 s before any measurement).
    editor = StandInEditor(hold_at=2, step_seconds=0.1)

    async def scenario() -> None:
        first = world.request(steps=100)
        second = world.request()
        async with running_worker(world.queue, world.storage, editor):
            await asyncio.to_thread(editor.held.wait, DEADLINE)
            sweeps = world.calls("requeue_expired")
            # Several sweeps and wake-ups later, the second is still queued: waiting behind this edit
            # for 10 s is what claiming ahead must not do to a job.
            await eventually(
                lambda: world.calls("requeue_expired") >= sweeps + 5, what="five sweeps", timeout=DEADLINE
            )
            assert (world.status(second), world.calls("claim_ahead")) == ("queued", 0)
            world.queue.cancel(first)
            await eventually(
                lambda: world.status(second) == "processing", what="the second claimed", timeout=DEADLINE
            )
            editor.proceed.set()
            await eventually(lambda: world.status(second) == "succeeded", timeout=DEADLINE)

    run(scenario)


def test_cancelling_a_job_claimed_ahead_frees_it_at_once() -> None:
    world = World()
    editor = RecordingEditor(hold_at=7, step_seconds=0.01)

    async def scenario() -> None:
        first = world.request()
        second = world.request()
        async with running_worker(world.queue, world.storage, editor) as worker:
            await asyncio.to_thread(editor.held.wait, DEADLINE)
            await eventually(
                lambda: world.status(second) == "processing", what="the claim ahead", timeout=DEADLINE
            )
            assert world.queue.cancel(second)
            # Its job ends while the first edit is still held: nothing waits for the GPU to free.
            await eventually(
                lambda: second not in {job.job.id for job in worker._slots.jobs},
                what="freed",
                timeout=DEADLINE,
            )
            assert editor.calls == 1 and not editor.proceed.is_set()
            # Its place is free: a third request is claimed ahead in its stead.
            third = world.request()
            await eventually(
                lambda: world.status(third) == "processing", what="the third claimed ahead", timeout=DEADLINE
            )
            editor.proceed.set()
            await eventually(
                lambda: world.status(first) == world.status(third) == "succeeded", timeout=DEADLINE
            )
        assert world.status(second) == "canceled"
        assert world.queue.row(second).output_path is None

    run(scenario)
    assert editor.calls == 2


def test_with_prefetch_off_the_next_job_waits_for_a_free_turn() -> None:
    world = World()
    editor = StandInEditor(hold_at=7, step_seconds=0.01)

    async def scenario() -> None:
        first, second = world.request(), world.request()
        async with running_worker(world.queue, world.storage, editor, fast_config(worker_prefetch=0)):
            await asyncio.to_thread(editor.held.wait, DEADLINE)
            sweeps = world.calls("requeue_expired")
            await eventually(
                lambda: world.calls("requeue_expired") >= sweeps + 3, what="three sweeps", timeout=DEADLINE
            )
            assert (world.status(second), world.calls("claim_ahead")) == ("queued", 0)
            editor.proceed.set()
            await eventually(
                lambda: world.status(first) == world.status(second) == "succeeded", timeout=DEADLINE
            )

    run(scenario)


class GatedUploads(InMemoryObjectStorage):
    """Outputs wait at the gate before they are stored (an upload in flight)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def upload(self, bucket: str, path: str, data: bytes, *, content_type: str) -> None:
        if bucket != INPUTS:
            self.waiting += 1
            await self.gate.wait()
        await super().upload(bucket, path, data, content_type=content_type)


def test_the_gpu_turn_ends_with_the_edit_so_the_next_edit_overlaps_the_upload() -> None:
    world = World()
    world.storage = GatedUploads(world.clock)
    world.queue = InMemoryJobQueue(clock=world.clock, storage=world.storage)
    editor = StandInEditor()
    storage = world.storage

    async def scenario() -> None:
        first, second = world.request(), world.request()
        async with running_worker(world.queue, world.storage, editor, fast_config(worker_prefetch=0)):
            # The first output's upload is held; the second edit runs meanwhile, on the one turn.
            await eventually(
                lambda: editor.calls == 2 and storage.waiting == 2, what="both edits done", timeout=DEADLINE
            )
            assert world.status(first) == world.status(second) == "processing"
            storage.gate.set()
            await eventually(
                lambda: world.status(first) == world.status(second) == "succeeded", timeout=DEADLINE
            )

    run(scenario)


# --- The pacing rule -----------------------------------------------------------------------------------
def job(
    *, turn: bool = False, step: int = 0, total: int = 8, at: float = 100.0, pace: float = 0.25
) -> ActiveJob:
    active = ActiveJob(job=EditJob(uuid.uuid4(), None, EditParams(prompt="p"), "i", (), "o", 1, 3), loop=None)  # type: ignore[arg-type]
    active.has_turn = turn
    if step:
        active.step, active.total_steps, active.step_at = step, total, at
        active.first_step_at = at - (step - 1) * pace
    return active


def test_pacing_claims_now_while_a_turn_is_free_and_ahead_only_near_the_end() -> None:
    pacing = Pacing(turns=1, prefetch=1)
    assert pacing.lead == pytest.approx(2.25)
    assert pacing.next_claim([], now=100) == "now"
    early = job(turn=True, step=2, pace=0.5)  # 6 steps of 0.5 s left: 3 s > 2.25 s
    assert pacing.next_claim([early], now=100) is None
    assert pacing.due_in([early], now=100) == pytest.approx(0.75)
    assert pacing.next_claim([early], now=100.8) == "ahead"
    late = job(turn=True, step=5, pace=0.5)  # 1.5 s left
    assert pacing.next_claim([late], now=100) == "ahead"
    waiting = job()
    assert pacing.next_claim([late, waiting], now=100) is None  # one ahead per edit about to end
    finishing = job()
    finishing.edit_done = True
    assert pacing.next_claim([finishing], now=100) == "now"  # its upload holds no turn
    assert Pacing(turns=1, prefetch=0).next_claim([late], now=100) is None
    assert Pacing(turns=1, prefetch=2).next_claim([late, waiting], now=100) == "ahead"


def test_pacing_measures_the_preparation_and_the_pace() -> None:
    pacing = Pacing(turns=1, prefetch=1)
    ready = job()
    ready.claim_started, ready.ready_at = 10.0, 10.4
    pacing.observe(ready, "ready")
    assert pacing.lead == pytest.approx(2 * 0.4 + 0.25)
    first_step = job(turn=True, step=1)  # one step seen: its own pace is not known yet
    assert pacing.remaining(first_step, now=100) is None
    done = job(turn=True, step=8, pace=0.3)
    pacing.observe(done, "edit_done")
    assert pacing.remaining(first_step, now=100.1) == pytest.approx(7 * 0.3 - 0.1)


def test_jobs_in_flight_are_bounded() -> None:
    pacing = Pacing(turns=1, prefetch=1)
    finishing = [job() for _ in range(3)]
    for active in finishing:
        active.edit_done = True
    assert pacing.next_claim(finishing, now=100) is None


# --- Two workers on the real queue ---------------------------------------------------------------------
def add_with_input(
    add_request: Callable[..., uuid.UUID], storage: InMemoryObjectStorage, **columns: Any
) -> uuid.UUID:
    request_id = add_request(num_inference_steps=8, **columns)
    storage.put(INPUTS, f"{OWNER}/{request_id}.png", png())
    return request_id


def status(db: psycopg.Connection[Row], request_id: uuid.UUID) -> Row:
    row = db.execute("select status, claimed_by from edit_requests where id = %s", (request_id,)).fetchone()
    assert row is not None
    return row


def test_with_two_workers_and_one_queued_job_the_idle_worker_gets_it(
    database_url: str, db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    """Worker A is at the last steps of an edit (it would claim ahead); worker B is idle. A request
    arrives and both are woken, A first: B gets it, and A's claim ahead leaves it alone."""
    storage = InMemoryObjectStorage()
    busy_editor = StandInEditor(hold_at=7, step_seconds=0.01)
    idle_editor = StandInEditor()

    async def scenario() -> None:
        queue_a, queue_b = PostgresJobQueue(database_url), PostgresJobQueue(database_url)
        await queue_a.open()
        await queue_b.open()
        await storage.open()
        # No sweeps during the test: the wake-ups below are the only claims.
        config = fast_config(sweep_interval_seconds=3600)
        a = Worker(
            queue=queue_a, storage=storage, editor=busy_editor, config=replace(config, worker_id="worker-a")
        )
        b = Worker(
            queue=queue_b, storage=storage, editor=idle_editor, config=replace(config, worker_id="worker-b")
        )
        stop, stop_b = asyncio.Event(), asyncio.Event()
        first = add_with_input(add_request, storage)
        task_a = asyncio.create_task(a.run(stop))
        task_b: asyncio.Task[None] | None = None
        try:
            await eventually(
                lambda: status(db, first)["claimed_by"] == "worker-a", what="A's edit", timeout=DEADLINE
            )
            await asyncio.to_thread(busy_editor.held.wait, DEADLINE)
            task_b = asyncio.create_task(b.run(stop_b))  # its first sweep claims nothing: idle
            await eventually(lambda: _idle(db) == ["worker-b"], what="B idle", timeout=DEADLINE)
            second = add_with_input(add_request, storage)
            a.wake()
            b.wake()
            await eventually(
                lambda: status(db, second)["status"] == "succeeded", what="the second", timeout=DEADLINE
            )
            assert status(db, second)["claimed_by"] == "worker-b"
            assert idle_editor.calls == 1 and busy_editor.calls == 1
            # B gone (its idle mark with it) and nobody idle: A claims ahead what comes next.
            stop_b.set()
            await task_b
            db.execute("delete from edit_idle_workers")
            third = add_with_input(add_request, storage)
            a.wake()
            await eventually(
                lambda: status(db, third)["status"] == "processing", what="claimed ahead", timeout=DEADLINE
            )
            assert status(db, third)["claimed_by"] == "worker-a" and busy_editor.calls == 1
            busy_editor.proceed.set()
            await eventually(
                lambda: status(db, third)["status"] == "succeeded", what="the third", timeout=DEADLINE
            )
        finally:
            busy_editor.proceed.set()
            stop.set()
            stop_b.set()
            await asyncio.gather(task_a, *([task_b] if task_b else []))
            await queue_a.close()
            await queue_b.close()
        assert status(db, first)["status"] == "succeeded"

    run(scenario)


def _idle(db: psycopg.Connection[Row]) -> list[str]:
    return [
        row["worker_id"]
        for row in db.execute("select worker_id from edit_idle_workers order by 1").fetchall()
    ]


def test_a_job_claimed_ahead_is_not_lost_when_its_worker_stops(
    database_url: str, db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    """Shutdown while a job waits for the GPU: it is released (queued again, its attempt given back)."""
    storage = InMemoryObjectStorage()
    editor = StandInEditor(hold_at=7, step_seconds=0.01)
    released = threading.Event()

    async def scenario() -> None:
        queue = PostgresJobQueue(database_url)
        await queue.open()
        await storage.open()
        worker = Worker(
            queue=queue, storage=storage, editor=editor, config=fast_config(shutdown_grace_seconds=0.2)
        )
        stop = asyncio.Event()
        first = add_with_input(add_request, storage)
        second = add_with_input(add_request, storage)
        task = asyncio.create_task(worker.run(stop))
        try:
            await asyncio.to_thread(editor.held.wait, DEADLINE)
            await eventually(
                lambda: status(db, second)["status"] == "processing", what="claimed ahead", timeout=DEADLINE
            )
            stop.set()
            await task
            released.set()
        finally:
            editor.proceed.set()
            stop.set()
            await queue.close()
        row = db.execute("select status, attempts from edit_requests where id = %s", (second,)).fetchone()
        assert row == {"status": "queued", "attempts": 0}
        assert status(db, first)["status"] == "queued"

    run(scenario)
    assert released.is_set()
