"""One job's life: its heartbeat beside the pipeline, its outcome recorded once, its end logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from processor.core.worker.heartbeat import Heartbeat
from processor.core.worker.job import ActiveJob, StopReason
from processor.core.worker.pipeline import JobPipeline
from processor.core.worker.recorder import WorkerMetrics
from processor.core.worker.writes import FinalWrites
from processor.observability.logs import request_context

log = logging.getLogger(__name__)


class JobRunner:
    """``run(active)`` returns the outcome; a cancelled run releases the row, then re-raises."""

    def __init__(
        self,
        *,
        pipeline: JobPipeline,
        heartbeat: Heartbeat,
        writes: FinalWrites,
        metrics: WorkerMetrics,
        worker_id: str,
    ) -> None:
        self._pipeline = pipeline
        self._heartbeat = heartbeat
        self._writes = writes
        self._metrics = metrics
        self._worker_id = worker_id

    async def run(self, active: ActiveJob) -> str:
        job = active.job
        self._metrics.started()
        heartbeat = asyncio.create_task(self._heartbeat.run(active), name=f"heartbeat-{job.id}")
        outcome, reason = "released", "shutdown"
        with request_context(job.id):
            log.info("claimed", extra={"attempt": job.attempts, "worker_id": self._worker_id})
            try:
                outcome, reason = await self._pipeline.run(active)
            except asyncio.CancelledError:
                # Hard shutdown past the grace period, or the caller gave up: stop the model
                # (its thread would run on), give the row back untouched, and let the
                # cancellation through so the caller sees it.
                active.stop(StopReason.SHUTDOWN)
                await self._writes.release(job)
                raise
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                self._metrics.ended()
                self._metrics.finished(outcome, reason, time.monotonic() - active.claimed_at)
                log.info("finished", extra={"outcome": outcome, "reason": reason})
        return outcome
