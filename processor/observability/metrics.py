"""Prometheus metrics for ``GET /metrics``: is the service keeping up, and where does time go.

Each ``Metrics`` owns its registry, so several services (tests, benchmarks) can live in
one process. Queue depth and the age of the oldest queued request come from the
database on every sweep; when the database cannot be read they are left unset rather
than reported as zero (an empty queue and an unreadable one must look different).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_STAGE_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600)
# Up to a minute: WEBHOOK_TIMEOUT_SECONDS is 10 by default and at most 60, and the attempts that
# run into it are the ones worth seeing.
_SEND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
_WAIT_BUCKETS = (0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _GpuMemoryCollector(Collector):
    """Reads CUDA memory at scrape time; reports nothing where there is no GPU."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            import torch
        except ImportError:
            return []
        if not torch.cuda.is_available():
            return []
        family = GaugeMetricFamily(
            "edit_processor_gpu_memory_bytes", "CUDA memory by kind", labels=["device", "kind"]
        )
        for index in range(torch.cuda.device_count()):
            family.add_metric([str(index), "allocated"], float(torch.cuda.memory_allocated(index)))
            family.add_metric([str(index), "reserved"], float(torch.cuda.memory_reserved(index)))
            family.add_metric([str(index), "max_allocated"], float(torch.cuda.max_memory_allocated(index)))
        return [family]


class Metrics:
    """The processor's metrics, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "edit_processor_jobs",
            "Jobs finished by this process, by outcome and reason code",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "edit_processor_stage_seconds",
            "Seconds per stage of a job: download, decode, edit (and the editor's own stages), encode, upload; total is claim to end",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.overhead_seconds = Histogram(
            "edit_processor_overhead_seconds",
            "Seconds of a job spent outside the model (claim to complete, minus the edit)",
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.claim_latency = Histogram(
            "edit_processor_claim_latency_seconds",
            "Seconds from a wake-up (webhook, notification, sweep) to a claimed job",
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.time_to_start = Histogram(
            "edit_processor_time_to_start_seconds",
            "Seconds from a request's creation to its claim",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "edit_processor_queue_depth", "edit_requests rows by status", ["status"], registry=self.registry
        )
        self.oldest_queued_age = Gauge(
            "edit_processor_oldest_queued_age_seconds",
            "Age of the oldest request that is queued and due",
            registry=self.registry,
        )
        self.jobs_in_progress = Gauge(
            "edit_processor_jobs_in_progress", "Jobs this process is running now", registry=self.registry
        )
        self.previews = Counter(
            "edit_processor_previews",
            "Live previews by outcome: written; superseded (a newer one came before it was uploaded); "
            "late (after its job ended); rejected (the row is no longer this worker's); failed; refused (too large)",
            ["outcome"],
            registry=self.registry,
        )
        self.retention_objects = Counter(
            "edit_processor_retention_objects",
            "Objects retention handled, by kind (input, output, orphan) and outcome (deleted, kept, failed)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.retention_runs = Counter(
            "edit_processor_retention_runs",
            "Retention runs, by outcome (done, failed: the database or Storage did not answer)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_attempts = Counter(
            "edit_processor_webhook_attempts",
            "Completion-webhook attempts by outcome: delivered; retrying (back-off, then sent again); "
            "dead (attempts used up, or refused for good); lost (its lease had lapsed and another "
            "process holds it); unrecorded (the database did not take the outcome: it is sent again)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_attempt_seconds = Histogram(
            "edit_processor_webhook_attempt_seconds",
            "Seconds one completion-webhook attempt took to send, answer included",
            buckets=_SEND_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_GpuMemoryCollector())

    def observe_queue(self, depth_by_status: Mapping[str, int], oldest_queued_age_seconds: float) -> None:
        for status, count in depth_by_status.items():
            self.queue_depth.labels(status=status).set(count)
        self.oldest_queued_age.set(oldest_queued_age_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
