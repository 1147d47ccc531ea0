"""One job's live previews: the editor hands them over, a task of their own uploads the latest.

Off the critical path by construction (docs/previews.md): ``offer`` runs on the editor's side
(any thread) and only swaps the newest preview into a one-place mailbox, so a step never waits
for Storage or the database. The upload task takes whatever is newest when it gets to it: a
preview that a newer one replaces before it was uploaded is dropped (``superseded``), so slow
uploads cost previews, never steps. ``stop`` (when the edit returns, before the output is
uploaded) closes the mailbox and cancels an upload in flight, so no preview is written after
the job's end; ``preview_edit_request`` refuses one anyway once the row is no longer this
worker's processing row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from processor.core.worker.config import preview_path_for
from processor.core.worker.recorder import WorkerMetrics
from processor.domain.errors import ProcessorError
from processor.domain.ports.editor import Preview, PreviewSink
from processor.domain.ports.queue import EditJob, JobQueue
from processor.domain.ports.storage import ObjectStorage
from processor.domain.rules import PREVIEW_EXTENSIONS, PREVIEW_MAX_BYTES

log = logging.getLogger(__name__)


class PreviewUploads:
    """``start``, give ``sink`` to the editor, ``stop`` when the edit returns (whatever its end)."""

    def __init__(
        self,
        *,
        job: EditJob,
        paths: set[str],
        storage: ObjectStorage,
        queue: JobQueue,
        worker_id: str,
        every_steps: int,
        interval_seconds: float,
        metrics: WorkerMetrics,
    ) -> None:
        self._job = job
        self._paths = paths
        self._storage = storage
        self._queue = queue
        self._worker_id = worker_id
        self._every_steps = every_steps
        self._interval = interval_seconds
        self._metrics = metrics
        self._lock = threading.Lock()
        self._pending: Preview | None = None
        self._closed = False
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> PreviewSink:
        self._task = asyncio.create_task(self._run(), name=f"previews-{self._job.id}")
        return PreviewSink(every_steps=self._every_steps, deliver=self.offer)

    def offer(self, preview: Preview) -> None:
        """The editor's ``deliver``: any thread, returns at once; never blocks, never raises."""
        if preview.content_type not in PREVIEW_EXTENSIONS or len(preview.data) > PREVIEW_MAX_BYTES:
            self._metrics.preview("refused")
            return
        with self._lock:
            if self._closed:
                self._metrics.preview("late")
                return
            if self._pending is not None:
                self._metrics.preview("superseded")
            self._pending = preview
        with contextlib.suppress(RuntimeError):  # the loop is gone: the job is over anyway
            self._loop.call_soon_threadsafe(self._ready.set)

    async def stop(self) -> None:
        """No preview is uploaded or written after this returns."""
        with self._lock:
            self._closed = True
            if self._pending is not None:
                self._metrics.preview("superseded")
                self._pending = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        last_upload = -float("inf")
        while True:
            await self._ready.wait()
            self._ready.clear()
            wait = last_upload + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # newer previews replace the waiting one meanwhile
            with self._lock:
                preview, self._pending = self._pending, None
            if preview is None:
                continue
            last_upload = time.monotonic()
            await self._upload(preview)

    async def _upload(self, preview: Preview) -> None:
        job = self._job
        path = preview_path_for(job, PREVIEW_EXTENSIONS[preview.content_type])
        self._paths.add(path)  # before the upload: a cut-off upload may still have stored it
        try:
            await self._storage.upload(
                job.output_bucket, path, preview.data, content_type=preview.content_type
            )
            written = await self._queue.preview(job.id, self._worker_id, path, preview.step)
        except ProcessorError as exc:
            # A preview is a courtesy: a failed one is logged and counted, and the edit goes on.
            log.warning("preview not written: %s", exc)
            self._metrics.preview("failed")
            return
        except Exception:
            log.exception("preview not written")
            self._metrics.preview("failed")
            return
        self._metrics.preview("written" if written else "rejected")
