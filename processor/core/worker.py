"""The worker loop: claim, download, validate, edit, upload, complete.

It depends only on the ports (``JobQueue``, ``ObjectStorage``, ``Editor``); the state
rules live in SQL. Wake-ups (webhook, LISTEN, sweep) all call ``Worker.wake`` and lead
to the same claim, so a lost or duplicated wake-up costs at most one sweep interval.

Each job gets its own heartbeat task on the event loop, independent of the model,
which runs in a thread. The heartbeat carries progress and learns from the database
whether the job was canceled (stop the model between steps) or lost to another
worker (abandon without writing anything).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from processor.domain.errors import EditCancelled, ProcessorError, TransientError
from processor.domain.images import ImageLimits, decode_image, encode_image
from processor.domain.params import generation_text
from processor.domain.ports import EditJob, Editor, EditResult, JobQueue, ObjectStorage
from processor.observability.logs import request_context
from processor.observability.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

DENOISING_SHARE = 0.95
"""Share of the row's progress given to denoising; decode and upload take the rest."""


class StopReason(enum.Enum):
    """Why a running job was told to stop."""

    CANCELED = "canceled"  # the client canceled the request
    LOST = "lost"  # another worker owns the row now
    SHUTDOWN = "shutdown"  # this process is stopping


@dataclass
class _ActiveJob:
    """One job in flight: its stop signal, its progress and when it started."""

    job: EditJob
    loop: asyncio.AbstractEventLoop
    claimed_at: float
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_reason: StopReason | None = None
    progress: float = 0.0
    progress_changed: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()

    def raise_if_stopped(self) -> None:
        if self.cancel.is_set():
            raise EditCancelled(f"stopped before the edit ({self.stop_reason})")

    def report_progress(self, value: float) -> None:
        """Record progress (monotonic); safe to call from the event loop only."""
        if value > self.progress:
            self.progress = value
            self.progress_changed.set()

    def on_step(self, step: int, total: int) -> None:
        """The editor's progress callback; runs in the model thread."""
        self.loop.call_soon_threadsafe(self.report_progress, DENOISING_SHARE * step / total)


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


class Worker:
    """Runs jobs from a ``JobQueue`` until told to stop."""

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
        self._storage = storage
        self._editor = editor
        self._config = config
        self._metrics = metrics or Metrics()
        self._limits = config.image_limits
        self._wakeup = asyncio.Event()
        self._woken_at: float | None = None
        self._active: dict[uuid.UUID, _ActiveJob] = {}
        self._tasks: set[asyncio.Task[str]] = set()
        self._stopping = False

    @property
    def worker_id(self) -> str:
        return self._config.worker_id

    @property
    def busy(self) -> bool:
        return bool(self._active)

    def wake(self) -> None:
        """Ask the loop to claim now (webhook, notification). Call from the event loop."""
        if self._woken_at is None:
            self._woken_at = time.monotonic()
        self._wakeup.set()

    def cancel(self, request_id: uuid.UUID) -> None:
        """A cancel notification: stop that job now if it runs here (its heartbeat would too)."""
        active = self._active.get(request_id)
        if active is not None:
            active.stop(StopReason.CANCELED)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until ``stop`` is set, then drain (see ``_drain``)."""
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
            await _wait_any(
                [self._wakeup.wait(), stop.wait()], timeout=max(0.0, next_sweep - time.monotonic())
            )
        await self._drain()
        log.info("worker stopped", extra={"worker_id": self.worker_id})

    async def run_one(self, request_id: uuid.UUID) -> str | None:
        """Claim that request and run it to the end (RunPod-style: one job per call).

        Returns the outcome (``succeeded``, ``retrying``, ``failed``, ``canceled``...), or
        None when the row could not be claimed (already taken, finished or not due).
        """
        job = await self._queue.claim(self.worker_id, self._config.lease_seconds, request_id)
        if job is None:
            return None
        active = self._start(job)
        return await self._run_job(active)

    async def _sweep(self) -> None:
        """Requeue lapsed leases (and promote ready rows); refresh queue metrics."""
        try:
            await self._queue.requeue_expired()
            depth, oldest_age = await self._queue.stats()
            self._metrics.observe_queue(depth, oldest_age)
        except ProcessorError as exc:
            log.warning("sweep failed: %s", exc)

    async def _fill_slots(self) -> None:
        while not self._stopping and len(self._active) < self._config.worker_concurrency:
            try:
                job = await self._queue.claim(self.worker_id, self._config.lease_seconds)
            except ProcessorError as exc:
                log.warning("claim failed: %s", exc)
                return
            woken_at, self._woken_at = self._woken_at, None
            if job is None:
                return
            if woken_at is not None:
                self._metrics.claim_latency.observe(time.monotonic() - woken_at)
            if job.created_at is not None:
                self._metrics.time_to_start.observe(max(0.0, time.time() - job.created_at.timestamp()))
            task = asyncio.create_task(self._run_job(self._start(job)), name=f"edit-{job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _start(self, job: EditJob) -> _ActiveJob:
        active = _ActiveJob(job=job, loop=asyncio.get_running_loop(), claimed_at=time.monotonic())
        self._active[job.id] = active
        return active

    async def _drain(self) -> None:
        """Stop claiming; let jobs finish within the grace period, then give them back.

        Heartbeats keep running until each job ends, so a draining worker never looks dead.
        """
        self._stopping = True
        if not self._tasks:
            return
        log.info("draining %d job(s)", len(self._tasks))
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._config.shutdown_grace_seconds)
        if not pending:
            return
        for active in self._active.values():
            active.stop(StopReason.SHUTDOWN)
        # The model stops between steps; I/O stages finish or are interrupted below.
        _, still = await asyncio.wait(pending, timeout=max(5.0, self._config.heartbeat_interval_seconds))
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)

    async def _run_job(self, active: _ActiveJob) -> str:
        job = active.job
        self._metrics.jobs_in_progress.inc()
        heartbeat = asyncio.create_task(self._heartbeat_loop(active))
        with request_context(job.id):
            log.info("claimed", extra={"attempt": job.attempts, "worker_id": self.worker_id})
            try:
                outcome, reason = await self._execute(active)
            except asyncio.CancelledError:
                # Hard shutdown past the grace period: give the row back untouched.
                await self._release(job)
                outcome, reason = "released", "shutdown"
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                self._active.pop(job.id, None)
                self._metrics.jobs_in_progress.dec()
                self._wakeup.set()
            self._metrics.jobs.labels(outcome=outcome, reason=reason).inc()
            self._metrics.stage_seconds.labels(stage="total").observe(time.monotonic() - active.claimed_at)
            log.info("finished", extra={"outcome": outcome, "reason": reason})
        return outcome

    async def _execute(self, active: _ActiveJob) -> tuple[str, str]:
        """Run the job; returns ``(outcome, reason)`` for metrics and logs."""
        job = active.job
        try:
            inputs = await self._timed("download", self._download_inputs(job))
            decoded = await self._timed(
                "decode",
                asyncio.to_thread(lambda: [decode_image(data, self._limits) for data in inputs]),
            )
            active.raise_if_stopped()
            edit_started = time.monotonic()
            result = await asyncio.to_thread(
                self._editor.edit, decoded, job.params(), on_progress=active.on_step, cancel=active.cancel
            )
            edit_seconds = time.monotonic() - edit_started
            for stage, seconds in result.timings.items():
                self._metrics.stage_seconds.labels(stage=stage).observe(seconds)
            encoded = await self._timed(
                "encode", asyncio.to_thread(encode_image, result.image, "png", _png_text(job, result))
            )
            output_path = output_path_for(job)
            await self._timed(
                "upload",
                self._storage.upload(job.output_bucket, output_path, encoded, content_type="image/png"),
            )
            completed = await self._outlasting_outages(
                lambda: self._queue.complete(job.id, self.worker_id, output_path, _result_json(job, result))
            )
            if completed:
                self._metrics.overhead_seconds.observe(time.monotonic() - active.claimed_at - edit_seconds)
                return "succeeded", "ok"
            return "lost", "not_owner"
        except EditCancelled:
            return await self._after_stop(active)
        except ProcessorError as exc:
            if active.stop_reason is not None:
                return await self._after_stop(active)
            return await self._fail(job, exc)
        except Exception as exc:
            log.exception("unexpected error")
            return await self._fail(
                job, ProcessorError(f"{type(exc).__name__}: {exc}", reason="internal_error")
            )

    async def _after_stop(self, active: _ActiveJob) -> tuple[str, str]:
        reason = active.stop_reason
        if reason is StopReason.SHUTDOWN:
            await self._release(active.job)
            return "released", "shutdown"
        if reason is StopReason.CANCELED:
            return "canceled", "canceled"  # the row is already canceled; nothing to write
        return "lost", "lease_lost"

    async def _fail(self, job: EditJob, exc: ProcessorError) -> tuple[str, str]:
        retryable = exc.retryable or isinstance(exc, TransientError)
        log.warning("failed: %s", exc, extra={"retryable": retryable})
        try:
            status = await self._outlasting_outages(
                lambda: self._queue.fail(
                    job.id, self.worker_id, exc.message, retryable=retryable, error_code=exc.reason
                )
            )
        except ProcessorError as write_error:
            # The lease lapses and the sweep requeues the row: nothing is lost.
            log.error("could not record the failure: %s", write_error)
            return "error", exc.reason
        return ("retrying" if status == "queued" else status), exc.reason

    async def _release(self, job: EditJob) -> None:
        try:
            await self._outlasting_outages(lambda: self._queue.release(job.id, self.worker_id))
        except ProcessorError as exc:
            log.error("could not release: %s", exc)

    async def _outlasting_outages(self, write: Callable[[], Awaitable[T]]) -> T:
        """A job's last write, retried through a short database outage (a restart, a failover)
        for up to a third of the lease: finished GPU work is worth keeping."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_delay(self._config.lease_seconds / 3),
            wait=wait_exponential_jitter(initial=0.2, max=2.0),
            reraise=True,
        ):
            with attempt:
                return await write()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _download_inputs(self, job: EditJob) -> list[bytes]:
        return list(
            await asyncio.gather(
                *(
                    self._storage.download(job.input_bucket, path, max_bytes=self._limits.max_bytes)
                    for path in job.input_paths
                )
            )
        )

    async def _heartbeat_loop(self, active: _ActiveJob) -> None:
        """Extend the lease and publish progress: at least every heartbeat interval,
        at most once per progress interval. Stops the job on ``canceled`` or ``lost``."""
        config = self._config
        last_sent = time.monotonic()
        while True:
            deadline = last_sent + config.heartbeat_interval_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    active.progress_changed.wait(), timeout=max(0.0, deadline - time.monotonic())
                )
            throttle = last_sent + config.progress_interval_seconds - time.monotonic()
            if throttle > 0:
                await asyncio.sleep(throttle)
            active.progress_changed.clear()
            last_sent = time.monotonic()
            try:
                answer = await self._queue.heartbeat(
                    active.job.id, self.worker_id, active.progress, config.lease_seconds
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

    async def _timed(self, stage: str, work: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            return await work
        finally:
            self._metrics.stage_seconds.labels(stage=stage).observe(time.monotonic() - started)


def _png_text(job: EditJob, result: EditResult) -> dict[str, str]:
    return {**generation_text(job.params(), result), "request_id": str(job.id)}


def _result_json(job: EditJob, result: EditResult) -> dict[str, Any]:
    return {**result.metadata(), "attempt": job.attempts}


async def _wait_any(waits: list[Awaitable[Any]], timeout: float) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
