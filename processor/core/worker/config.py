"""What the worker is told: its identity, its timings and the image limits."""

from __future__ import annotations

from dataclasses import dataclass

from processor.domain.images import ImageLimits
from processor.domain.ports import EditJob


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What the worker needs to know; the composition root fills it from ``Settings``."""

    worker_id: str
    lease_seconds: int
    heartbeat_interval_seconds: float
    progress_interval_seconds: float
    sweep_interval_seconds: float
    worker_concurrency: int
    shutdown_grace_seconds: float
    image_limits: ImageLimits


def output_path_for(job: EditJob) -> str:
    """Deterministic, so a retried job overwrites instead of leaving orphans."""
    owner = str(job.user_id) if job.user_id is not None else "_no_user"
    return f"{owner}/{job.id}.png"
