"""The worker: claims jobs from a ``JobQueue`` and runs them through the ports.

It depends only on the ports (``JobQueue``, ``ObjectStorage``, ``Editor``); the state rules
live in SQL. One class per job (see docs/worker.md):

- ``loop.Worker``: the claim loop (wake-ups, sweep timer, filling free slots), ``run_one``;
- ``slots.JobSlots``: the jobs in flight, stopping one by id, the drain on shutdown;
- ``runner.JobRunner``: one job's life (heartbeat beside the pipeline, outcome, logs);
- ``pipeline.JobPipeline``: download → decode → edit → encode → upload → complete, failure mapping;
- ``heartbeat.Heartbeat``: the lease, throttled progress, stopping on ``canceled``/``lost``;
- ``writes.FinalWrites``: complete, fail and release, retried through short outages;
- ``recorder.WorkerMetrics``: every metric the worker records, once each.
"""

from __future__ import annotations

from processor.core.worker.config import WorkerConfig, output_path_for
from processor.core.worker.job import ActiveJob, StopReason
from processor.core.worker.loop import Worker

__all__ = ["ActiveJob", "StopReason", "Worker", "WorkerConfig", "output_path_for"]
