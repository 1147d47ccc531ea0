"""The jobs in flight (as many as ``Pacing`` lets the loop claim), stopped by id, drained on shutdown."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from processor.core.worker.config import WorkerConfig
from processor.core.worker.job import ActiveJob, StopReason
from processor.core.worker.runner import JobRunner
from processor.domain.ports.queue import EditJob

log = logging.getLogger(__name__)

HARD_STOP_MIN_SECONDS = 5.0
"""After the grace period, how long stopped jobs get to wind down before their tasks are cancelled."""


class JobSlots:
    """Owns the running jobs; ``on_free`` is called whenever one ends (a slot to refill)."""

    def __init__(
        self,
        runner: JobRunner,
        config: WorkerConfig,
        *,
        on_free: Callable[[], None],
        on_change: Callable[[ActiveJob, str], None] | None = None,
    ) -> None:
        """``on_change`` hears each job's pacing events (``ActiveJob.notify``)."""
        self._runner = runner
        self._config = config
        self._on_free = on_free
        self._on_change = on_change
        self._active: dict[uuid.UUID, ActiveJob] = {}
        self._tasks: set[asyncio.Task[str]] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._active)

    @property
    def jobs(self) -> list[ActiveJob]:
        """The jobs in flight, in the order they were claimed."""
        return list(self._active.values())

    def stop(self, request_id: uuid.UUID, reason: StopReason) -> None:
        active = self._active.get(request_id)
        if active is not None:
            active.stop(reason)

    def spawn(self, job: EditJob, *, claim_started: float | None = None) -> None:
        """Run ``job`` in a task of its own; its slot is taken at once, before the task starts."""
        active = self._take_slot(job, claim_started)
        task = asyncio.create_task(self._run(active), name=f"edit-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, job: EditJob) -> str:
        """Run ``job`` here and return its outcome."""
        return await self._run(self._take_slot(job, None))

    def _take_slot(self, job: EditJob, claim_started: float | None) -> ActiveJob:
        active = ActiveJob(
            job=job, loop=asyncio.get_running_loop(), claim_started=claim_started, notify=self._on_change
        )
        self._active[job.id] = active
        return active

    async def _run(self, active: ActiveJob) -> str:
        try:
            return await self._runner.run(active)
        finally:
            self._active.pop(active.job.id, None)
            self._on_free()

    async def drain(self) -> None:
        """Stop taking jobs; let them finish within the grace period, then give them back.

        Stopped jobs release their rows themselves (the model stops between steps); tasks still
        running after that are cancelled, and a cancelled job releases its row too. Heartbeats
        keep running until each job ends, so a draining worker never looks dead.
        """
        self.closed = True
        if not self._tasks:
            return
        log.info("draining %d job(s)", len(self._tasks))
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._config.shutdown_grace_seconds)
        if not pending:
            return
        for active in self._active.values():
            active.stop(StopReason.SHUTDOWN)
        _, still = await asyncio.wait(
            pending, timeout=max(HARD_STOP_MIN_SECONDS, self._config.heartbeat_interval_seconds)
        )
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)
