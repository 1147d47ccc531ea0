"""The job pipeline: download, decode, prepare, edit, encode, upload, complete; failures mapped to the row.

A job calls the editor once its inputs are downloaded, decoded and prepared (``Editor.prepare``, where
the editor has one): a job claimed ahead then waits in the editor's own queue (its lock, or a free
engine of a pool) and starts the moment the edit before it releases the GPU, with no hop through the
event loop. The job's claim on the GPU ends when its edit returns, so its output's encode, upload and
completion overlap the next edit.

Outcomes (for metrics and logs): ``succeeded``; ``retrying`` or ``failed`` after ``fail``;
``canceled`` (the row is already canceled: nothing written); ``lost`` (another worker owns
the row: nothing written); ``released`` (shutdown: the row and its attempt given back);
``error`` (the failure could not be written: the lease lapses and the sweep requeues).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from PIL import Image

from processor.core.decoding import shared_pool
from processor.core.direct_edit import encode_output
from processor.core.worker.config import WorkerConfig, output_path_for
from processor.core.worker.job import ActiveJob, StopReason
from processor.core.worker.previews import PreviewUploads
from processor.core.worker.recorder import WorkerMetrics
from processor.core.worker.writes import FinalWrites
from processor.domain.errors import EditCancelled, ProcessorError, TransientError
from processor.domain.ports.editor import Editor, EditResult, takes_prepared, takes_previews
from processor.domain.ports.queue import EditJob, JobQueue
from processor.domain.ports.storage import ObjectStorage
from processor.domain.reasons import ReasonCode

log = logging.getLogger(__name__)

Outcome = tuple[str, str]
"""``(outcome, reason)``: what happened to the job, and its reason code."""
_FINAL_OUTCOMES = frozenset({"succeeded", "failed", "canceled"})


class JobPipeline:
    """Runs one claimed job through its stages and writes its end to the queue."""

    def __init__(
        self,
        *,
        storage: ObjectStorage,
        queue: JobQueue,
        editor: Editor,
        writes: FinalWrites,
        config: WorkerConfig,
        metrics: WorkerMetrics,
    ) -> None:
        self._storage = storage
        self._prepares = takes_prepared(editor)
        self._queue = queue
        self._worker_id = config.worker_id
        # An Editor written before live previews (its ``edit`` takes no ``previews``) still works:
        # it just gets none to send.
        self._preview_every_steps = config.preview_every_steps if takes_previews(editor) else 0
        self._preview_interval = config.preview_interval_seconds
        self._editor = editor
        self._writes = writes
        self._limits = config.image_limits
        self._encoding = config.output_encoding
        self._metrics = metrics

    async def run(self, active: ActiveJob) -> Outcome:
        outcome = await self._ended(active)
        # Only once the request is final: the row no longer points at its previews
        # (edit_requests_reset_preview clears the columns). A job given back, retried or lost keeps
        # them: the path is the request's, and the next attempt (maybe another worker's, already
        # running) overwrites it.
        if active.preview_paths and outcome[0] in _FINAL_OUTCOMES:
            await self._delete_previews(active)
        return outcome

    async def _delete_previews(self, active: ActiveJob) -> None:
        # Best effort: a failed delete leaves one small object and is only logged.
        job = active.job
        try:
            await self._storage.delete_many(job.output_bucket, sorted(active.preview_paths))
        except ProcessorError as exc:
            log.warning("previews not deleted: %s", exc)
        except Exception:
            log.exception("previews not deleted")

    async def _run(self, active: ActiveJob) -> Outcome:
        try:
            return await self._stages(active)
        except BaseException:
            active.edit_finished()  # it will not run an edit (any more): the next may be claimed
            raise

    async def _ended(self, active: ActiveJob) -> Outcome:
        try:
            return await self._run(active)
        except EditCancelled:
            return await self.after_stop(active)
        except ProcessorError as exc:
            # A stopped job's I/O may fail because it was stopped; the stop explains it.
            if active.stop_reason is not None:
                return await self.after_stop(active)
            return await self._fail(active.job, exc)
        except Exception as exc:
            log.exception("unexpected error")
            return await self._fail(
                active.job, ProcessorError(f"{type(exc).__name__}: {exc}", reason=ReasonCode.INTERNAL_ERROR)
            )

    async def _stages(self, active: ActiveJob) -> Outcome:
        job, timed = active.job, self._metrics.timed
        inputs = await timed("download", self._download(job))
        decoded = await timed("decode", self._decode(active, inputs))
        prepared = await self._prepare(job, decoded)
        active.raise_if_stopped()
        active.mark_ready()
        try:
            edit_started = time.monotonic()
            result = await self._edit(active, decoded, prepared)
            edit_seconds = time.monotonic() - edit_started
        finally:
            active.edit_finished()  # whatever happened, this job's GPU work is over
        self._metrics.edit(edit_seconds, result.timings)
        encoded = await timed(
            "encode", asyncio.to_thread(encode_output, job.params, result, self._encoding, request_id=job.id)
        )
        output_path = output_path_for(job, encoded.encoding.extension)
        await timed(
            "upload",
            self._storage.upload(
                job.output_bucket, output_path, encoded.data, content_type=encoded.encoding.media_type
            ),
        )
        # No attempt count in the result: the owner reads it, and retries are the operators' business.
        if not await self._writes.complete(job, output_path, {**result.metadata(), **encoded.metadata()}):
            return "lost", "not_owner"
        self._metrics.overhead(time.monotonic() - active.claimed_at - edit_seconds)
        return "succeeded", "ok"

    async def _decode(self, active: ActiveJob, inputs: list[bytes]) -> list[Image.Image]:
        """The inputs decoded in the decoding processes (each within its CPU time); a stop (cancel,
        lost lease, shutdown) kills the decodes still running."""
        pool = shared_pool()
        decoding = asyncio.ensure_future(
            asyncio.gather(*(pool.decode(data, self._limits) for data in inputs))
        )
        stopping = asyncio.ensure_future(active.stopped.wait())
        waits: list[asyncio.Future[Any]] = [decoding, stopping]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not decoding.done():
                decoding.cancel()
        active.raise_if_stopped()
        return decoding.result()

    async def _prepare(self, job: EditJob, decoded: list[Image.Image]) -> object | None:
        """The editor's CPU work ahead of the GPU (``takes_prepared``), in a thread; None without it."""
        if not self._prepares:
            return None
        prepare = self._editor.prepare  # type: ignore[attr-defined]  # takes_prepared checked it
        prepared: object | None = await asyncio.to_thread(prepare, decoded, job.params)
        return prepared

    async def _edit(
        self, active: ActiveJob, decoded: list[Image.Image], prepared: object | None
    ) -> EditResult:
        """The editor call, in a thread; with previews on, their uploads run beside it and stop
        when it returns (before the output is uploaded: no preview after the job's end)."""
        job = active.job
        options: dict[str, Any] = {} if prepared is None else {"prepared": prepared}
        if self._preview_every_steps <= 0:
            return await asyncio.to_thread(
                self._editor.edit,
                decoded,
                job.params,
                on_progress=active.on_step,
                cancel=active.cancel,
                **options,
            )
        previews = PreviewUploads(
            job=job,
            paths=active.preview_paths,
            storage=self._storage,
            queue=self._queue,
            worker_id=self._worker_id,
            every_steps=self._preview_every_steps,
            interval_seconds=self._preview_interval,
            metrics=self._metrics,
        )
        sink = previews.start()
        try:
            return await asyncio.to_thread(
                self._editor.edit,
                decoded,
                job.params,
                on_progress=active.on_step,
                cancel=active.cancel,
                previews=sink,
                **options,
            )
        finally:
            await previews.stop()

    async def _download(self, job: EditJob) -> list[bytes]:
        max_bytes = self._limits.max_bytes
        return list(
            await asyncio.gather(
                *(
                    self._storage.download(job.input_bucket, path, max_bytes=max_bytes)
                    for path in job.input_paths
                )
            )
        )

    async def after_stop(self, active: ActiveJob) -> Outcome:
        """A stopped job: give it back on shutdown; on cancel or loss the row is not ours to write."""
        reason = active.stop_reason
        if reason is StopReason.SHUTDOWN:
            await self._writes.release(active.job)
            return "released", "shutdown"
        if reason is StopReason.CANCELED:
            return "canceled", "canceled"
        return "lost", "lease_lost"

    async def _fail(self, job: EditJob, exc: ProcessorError) -> Outcome:
        retryable = exc.retryable or isinstance(exc, TransientError)
        log.warning("failed: %s", exc, extra={"retryable": retryable})
        try:
            status = await self._writes.fail(job, exc, retryable=retryable)
        except ProcessorError as write_error:
            # The lease lapses and the sweep requeues the row: nothing is lost.
            log.error("could not record the failure: %s", write_error)
            return "error", exc.reason
        return ("retrying" if status == "queued" else status), exc.reason
