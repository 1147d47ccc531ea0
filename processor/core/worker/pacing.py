"""When the worker claims: at once while a GPU turn is free, and ahead, just in time, while it is not.

A GPU turn is one edit at a time on the editor (``WORKER_CONCURRENCY``, one per engine by default): a job
holds one from its claim until its edit returns; its encode and upload hold none.

Claiming ahead (``WORKER_PREFETCH``, docs/worker.md#prefetch, decision 0140): while an edit's last
steps run, the next job is claimed, downloaded, decoded and prepared, so the next edit starts the
moment the GPU frees. Not earlier than needed: a job claimed ahead waits for this worker's GPU,
so it is claimed only once a running edit has less left than the preparation takes (the lead), and
the database leaves the front of the queue to idle workers (``claim_edit_request_ahead``).

What the pacing knows, all measured here: the preparation (from sending the claim to ready for the
GPU, smoothed over jobs) and each edit's seconds per step (from its progress; before its second step,
the last edits' pace). The lead is twice the preparation plus a margin: claiming a little early
costs the job a short wait, claiming late costs the GPU its idle time.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Literal

from processor.core.worker.job import ActiveJob

PREPARATION_GUESS_SECONDS = 1.0
"""The preparation's time before one was measured (download, decode and prepare of a 1 MP input on a
loaded CPU, plus a claim and a download behind a remote database and Storage)."""
LEAD_FACTOR = 2.0
LEAD_MARGIN_SECONDS = 0.25
SMOOTHING = 0.3
"""Weight of the newest measurement in the running averages."""

Claim = Literal["now", "ahead"]


class Pacing:
    """Decides which claim the loop makes next, if any, and when a claim ahead falls due."""

    def __init__(self, *, turns: int, prefetch: int) -> None:
        self.turns = turns
        self.prefetch = prefetch
        self.most_jobs = turns * (2 + prefetch)
        """Jobs in flight at most: those before and on the GPU, and as many again finishing."""
        self._preparation: float | None = None
        self._step_seconds: float | None = None

    @property
    def lead(self) -> float:
        """How long before a GPU turn frees its next job is claimed."""
        preparation = PREPARATION_GUESS_SECONDS if self._preparation is None else self._preparation
        return LEAD_FACTOR * preparation + LEAD_MARGIN_SECONDS

    def observe(self, active: ActiveJob, event: str) -> None:
        if event == "ready" and active.ready_at is not None and active.claim_started is not None:
            self._preparation = _smoothed(self._preparation, active.ready_at - active.claim_started)
        elif event == "edit_done":
            pace = active.seconds_per_step()
            if pace is not None:
                self._step_seconds = _smoothed(self._step_seconds, pace)

    def remaining(self, active: ActiveJob, now: float) -> float | None:
        """Seconds the running edit of ``active`` has left (its steps); None while not known."""
        if not active.has_turn or active.step == 0:
            return None
        pace = active.seconds_per_step() or self._step_seconds
        if pace is None:
            return None
        return (active.total_steps - active.step) * pace - (now - active.step_at)

    def next_claim(self, jobs: Collection[ActiveJob], now: float | None = None) -> Claim | None:
        """``now`` while a turn is free, ``ahead`` when a running edit ends within the lead and fewer
        jobs wait for the GPU than ``prefetch`` per such edit, else None."""
        if len(jobs) >= self.most_jobs:
            return None
        before_gpu = [job for job in jobs if not job.edit_done]
        if len(before_gpu) < self.turns:
            return "now"
        if self.prefetch <= 0:
            return None
        now = time.monotonic() if now is None else now
        waiting = sum(1 for job in before_gpu if not job.has_turn)
        ending = sum(1 for job in before_gpu if self._ends_within(job, now, self.lead))
        return "ahead" if waiting < self.prefetch * ending else None

    def due_in(self, jobs: Collection[ActiveJob], now: float | None = None) -> float | None:
        """Seconds until a running edit comes within the lead of its end (the next claim ahead may
        then be due); None when no running edit's end is known or all are within it already."""
        if self.prefetch <= 0:
            return None
        now = time.monotonic() if now is None else now
        waits = [
            left - self.lead
            for job in jobs
            if not job.edit_done and (left := self.remaining(job, now)) is not None and left > self.lead
        ]
        return min(waits) if waits else None

    def _ends_within(self, job: ActiveJob, now: float, seconds: float) -> bool:
        left = self.remaining(job, now)
        return left is not None and left <= seconds


def _smoothed(previous: float | None, value: float) -> float:
    value = max(0.0, value)
    return value if previous is None else (1 - SMOOTHING) * previous + SMOOTHING * value
