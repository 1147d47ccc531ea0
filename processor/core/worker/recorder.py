"""Every metric the worker records, in one place, so each is recorded once per event.

``stage_seconds{stage="total"}`` is the job's wall time from claim to end (what operators
want); the editor's own total is not recorded again: the call to the editor is stage
``edit``, and its inner stages (``prompt_encoding``, ``denoising``...) keep their names.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from processor.domain.ports.queue import EditJob
from processor.observability.metrics import Metrics

T = TypeVar("T")

EDITOR_TOTAL = "total"
"""The editor's own total in ``EditResult.timings``: covered by stage ``edit``, so not recorded."""


class WorkerMetrics:
    """Wraps ``Metrics`` with the worker's events: woken, claimed, stage, edit, finished."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._woken_at: float | None = None

    def woken(self) -> None:
        """A wake-up arrived; the claim latency runs from the first one since the last claim."""
        if self._woken_at is None:
            self._woken_at = time.monotonic()

    def claim_answered(self, job: EditJob | None) -> None:
        woken_at, self._woken_at = self._woken_at, None
        if job is None:
            return
        if woken_at is not None:
            self.metrics.claim_latency.observe(time.monotonic() - woken_at)
        if job.created_at is not None:
            self.metrics.time_to_start.observe(max(0.0, time.time() - job.created_at.timestamp()))

    def queue(self, depth: Mapping[str, int], oldest_age_seconds: float) -> None:
        self.metrics.observe_queue(depth, oldest_age_seconds)

    async def timed(self, stage: str, work: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            return await work
        finally:
            self.stage(stage, time.monotonic() - started)

    def stage(self, stage: str, seconds: float) -> None:
        self.metrics.stage_seconds.labels(stage=stage).observe(seconds)

    def edit(self, seconds: float, timings: Mapping[str, float]) -> None:
        """The editor call's wall time as ``edit``, and the editor's inner stages."""
        self.stage("edit", seconds)
        for stage, stage_seconds in timings.items():
            if stage != EDITOR_TOTAL:
                self.stage(stage, stage_seconds)

    def started(self) -> None:
        self.metrics.jobs_in_progress.inc()

    def ended(self) -> None:
        self.metrics.jobs_in_progress.dec()

    def finished(self, outcome: str, reason: str, seconds: float) -> None:
        """Once per job: its outcome, and its wall time from claim to end as stage ``total``."""
        self.metrics.jobs.labels(outcome=outcome, reason=reason).inc()
        self.stage("total", seconds)

    def preview(self, outcome: str) -> None:
        """One live preview's fate (``PreviewUploads``); thread-safe, as prometheus counters are."""
        self.metrics.previews.labels(outcome=outcome).inc()

    def overhead(self, seconds: float) -> None:
        self.metrics.overhead_seconds.observe(seconds)
