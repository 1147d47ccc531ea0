"""The claim loop: wake-ups and the sweep timer lead to one claim path that fills free slots.

Wake-ups (webhook, LISTEN, sweep) all call ``Worker.wake`` and lead to the same claim, so a
lost or duplicated wake-up costs at most one sweep interval. ``Pacing`` says which claim: at once
while a GPU turn is free, ahead (``claim_ahead``) when a running edit is about to end; the jobs'
progress wakes the loop too, and it sleeps no longer than until the next claim ahead falls due.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from processor.core.worker.config import WorkerConfig
from processor.core.worker.heartbeat import Heartbeat
from processor.core.worker.job import ActiveJob, StopReason
from processor.core.worker.pacing import Pacing
from processor.core.worker.pipeline import JobPipeline
from processor.core.worker.recorder import WorkerMetrics
from processor.core.worker.runner import JobRunner
from processor.core.worker.slots import JobSlots
from processor.core.worker.writes import FinalWrites
from processor.domain.errors import ProcessorError
from processor.domain.ports.editor import Editor, engine_count
from processor.domain.ports.queue import JobQueue
from processor.domain.ports.storage import ObjectStorage
from processor.observability.metrics import Metrics

log = logging.getLogger(__name__)


class Worker:
    """Runs jobs from a ``JobQueue`` until told to stop. Builds its parts from the ports."""

    def __init__(
        self,
        *,
        queue: JobQueue,
        storage: ObjectStorage,
        editor: Editor,
        config: WorkerConfig,
        metrics: Metrics | None = None,
    ) -> None:
        self._queue = queue
        self._config = config
        self._metrics = WorkerMetrics(metrics or Metrics())
        self._wakeup = asyncio.Event()
        turns = config.worker_concurrency or engine_count(editor)
        self._pacing = Pacing(turns=turns, prefetch=config.worker_prefetch)
        self._ahead_found_none = False
        """The last claim ahead found nothing: try again after a wake-up, not at every step."""
        writes = FinalWrites(queue, config)
        pipeline = JobPipeline(
            storage=storage,
            queue=queue,
            editor=editor,
            writes=writes,
            config=config,
            metrics=self._metrics,
        )
        runner = JobRunner(
            pipeline=pipeline,
            heartbeat=Heartbeat(queue, config),
            writes=writes,
            metrics=self._metrics,
            worker_id=config.worker_id,
        )
        # A slot that frees up, or an edit that moves on, is a reason to claim again, but not a
        # wake-up to time.
        self._slots = JobSlots(runner, config, on_free=self._wakeup.set, on_change=self._job_changed)

    @property
    def worker_id(self) -> str:
        return self._config.worker_id

    @property
    def busy(self) -> bool:
        return len(self._slots) > 0

    def wake(self) -> None:
        """Ask the loop to claim now (webhook, notification). Call from the event loop."""
        self._metrics.woken()
        self._ahead_found_none = False
        self._wakeup.set()

    def _job_changed(self, active: ActiveJob, event: str) -> None:
        self._pacing.observe(active, event)
        # A step wakes the loop only while the job's pace is being learnt (its first two steps) or when a
        # claim is due now: the loop's timer covers the rest, and every wake-up takes the GIL from the
        # thread that feeds the GPU.
        if event != "step" or active.step <= 2:
            self._wakeup.set()
            return
        claim = self._pacing.next_claim(self._slots.jobs)
        if claim == "now" or (claim == "ahead" and not self._ahead_found_none):
            self._wakeup.set()

    def cancel(self, request_id: uuid.UUID) -> None:
        """A cancel notification: stop that job now if it runs here (its heartbeat would too)."""
        self._slots.stop(request_id, StopReason.CANCELED)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until ``stop`` is set, then drain (see ``JobSlots.drain``)."""
        log.info("worker started", extra={"worker_id": self.worker_id})
        next_sweep = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_sweep:
                await self._sweep()
                next_sweep = now + self._config.sweep_interval_seconds
                self.wake()
            if self._wakeup.is_set():
                self._wakeup.clear()
                await self._fill_slots()
            now = time.monotonic()
            until = next_sweep
            due = None if self._ahead_found_none else self._pacing.due_in(self._slots.jobs, now)
            if due is not None:
                until = min(until, now + due)
            await _wait_any([self._wakeup.wait(), stop.wait()], timeout=max(0.0, until - now))
            if due is not None and time.monotonic() >= now + due:
                self._wakeup.set()  # a running edit came within the lead: claim ahead
        await self._slots.drain()
        log.info("worker stopped", extra={"worker_id": self.worker_id})

    async def run_one(self, request_id: uuid.UUID) -> str | None:
        """Claim that request and run it to the end (RunPod-style: one job per call).

        Returns the outcome (``succeeded``, ``retrying``, ``failed``, ``canceled``...), or
        None when the row could not be claimed (already taken, finished or not due).
        """
        job = await self._queue.claim(self.worker_id, self._config.lease_seconds, request_id)
        if job is None:
            return None
        return await self._slots.run(job)

    async def _sweep(self) -> None:
        """Requeue lapsed leases (and promote ready rows); refresh queue metrics."""
        try:
            await self._queue.requeue_expired()
            depth, oldest_age = await self._queue.stats()
            self._metrics.queue(depth, oldest_age)
        except ProcessorError as exc:
            log.warning("sweep failed: %s", exc)

    async def _fill_slots(self) -> None:
        config = self._config
        while not self._slots.closed:
            kind = self._pacing.next_claim(self._slots.jobs)
            if kind is None or (kind == "ahead" and self._ahead_found_none):
                return
            claim_started = time.monotonic()
            try:
                if kind == "now":
                    job = await self._queue.claim(self.worker_id, config.lease_seconds)
                else:
                    # Idle workers count as such for three of their sweeps.
                    job = await self._queue.claim_ahead(
                        self.worker_id, config.lease_seconds, 3 * config.sweep_interval_seconds
                    )
            except ProcessorError as exc:
                log.warning("claim failed: %s", exc)
                return
            self._metrics.claim_answered(job)
            if job is None:
                self._ahead_found_none = kind == "ahead"
                return
            self._slots.spawn(job, claim_started=claim_started)


async def _wait_any(waits: list[Awaitable[Any]], timeout: float) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
