"""What the worker is told: its identity, its timings and the image limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from processor.domain.images import ImageLimits, OutputEncoding
from processor.domain.ports.queue import EditJob
from processor.domain.rules import preview_path_beside


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What the worker needs to know; the composition root fills it from ``Settings``."""

    worker_id: str
    lease_seconds: int
    heartbeat_interval_seconds: float
    progress_interval_seconds: float
    sweep_interval_seconds: float
    worker_concurrency: int | None
    """GPU turns: edits on the editor at once; None: one per engine (``ports.editor.engine_count``)."""
    shutdown_grace_seconds: float
    image_limits: ImageLimits
    preview_every_steps: int = 0
    """A live preview every this many steps; 0: none (docs/previews.md)."""
    preview_interval_seconds: float = 0.0
    """Least time between two preview uploads of one job."""
    worker_prefetch: int = 1
    """Jobs claimed ahead, just in time, per running edit about to end (docs/worker.md#prefetch); 0: none."""
    output_encoding: OutputEncoding = field(default_factory=OutputEncoding)
    """How results are encoded when their request names no format or quality (``OUTPUT_FORMAT``, ``OUTPUT_QUALITY``)."""


def output_path_for(job: EditJob, extension: str) -> str:
    """``{owner}/{id}.{extension}``: deterministic, so a retried job overwrites instead of leaving orphans."""
    return f"{_owner_folder(job)}/{job.id}.{extension}"


def preview_path_for(job: EditJob, extension: str) -> str:
    """Next to the output, in the owner's folder (the owner may read it), whatever the output's format;
    each preview overwrites it."""
    return preview_path_beside(output_path_for(job, extension), extension)


def _owner_folder(job: EditJob) -> str:
    return str(job.user_id) if job.user_id is not None else "_no_user"
