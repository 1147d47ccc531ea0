"""The heartbeat: keeps a job's lease, publishes its progress, hears cancel and loss.

It runs as its own task on the event loop, beside the model's thread, so a long denoising
step never lets the lease lapse. It beats at least every heartbeat interval and at most
once per progress interval (progress arrives after every step; the database need not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from processor.core.worker.config import WorkerConfig
from processor.core.worker.job import ActiveJob, StopReason
from processor.domain.errors import ProcessorError
from processor.domain.ports.queue import JobQueue

log = logging.getLogger(__name__)


class Heartbeat:
    """``run(active)`` until the job ends (cancel the task) or the queue answers ``canceled``/``lost``."""

    def __init__(self, queue: JobQueue, config: WorkerConfig) -> None:
        self._queue = queue
        self._config = config

    async def run(self, active: ActiveJob) -> None:
        config = self._config
        last_sent = time.monotonic()
        while True:
            deadline = last_sent + config.heartbeat_interval_seconds
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
            # arrives as progress is reported, and this loop would outlive its job.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await active.progress_changed.wait()
            throttle = last_sent + config.progress_interval_seconds - time.monotonic()
            if throttle > 0:
                await asyncio.sleep(throttle)
            active.progress_changed.clear()
            last_sent = time.monotonic()
            try:
                answer = await self._queue.heartbeat(
                    active.job.id, config.worker_id, active.progress, config.lease_seconds
                )
            except ProcessorError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            except Exception:
                # Never let the heartbeat die silently: the lease would lapse mid-job.
                log.exception("heartbeat failed unexpectedly")
                continue
            if answer == "canceled":
                active.stop(StopReason.CANCELED)
                return
            if answer == "lost":
                active.stop(StopReason.LOST)
                return
