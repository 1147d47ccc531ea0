"""Helpers for tests of code built on this processor: in-memory adapters and a stand-in editor.

Everything here runs without PostgreSQL, Supabase or a model, in milliseconds::

    storage = InMemoryObjectStorage()
    queue = InMemoryJobQueue(storage=storage)
    storage.put("edit-inputs", "u/in.png", png)  # what the app uploads
    request_id = queue.enqueue("make it blue", ["u/in.png"])
    async with running_worker(queue, storage, StandInEditor()):
        await eventually(lambda: queue.row(request_id).status == "succeeded")

The in-memory adapters pass the same conformance tests as the real ones
(``tests/test_port_job_queue.py``, ``tests/test_port_object_storage.py``,
``tests/test_port_wakeups.py``). See docs/testing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from PIL import Image

from processor.adapters.memory.clock import ManualClock
from processor.adapters.memory.faults import Faults
from processor.adapters.memory.queue import BatchProgress, InMemoryJobQueue, QueueCall, QueueRow
from processor.adapters.memory.storage import InMemoryObjectStorage
from processor.adapters.memory.wakeups import InMemoryWakeups
from processor.adapters.memory.webhooks import InMemoryWebhookOutbox, InMemoryWebhookReceiver
from processor.core.worker import Worker, WorkerConfig
from processor.domain.errors import EditCancelled
from processor.domain.images import ImageLimits
from processor.domain.ports.editor import Editor, EditResult, Preview, PreviewSink, ProgressCallback
from processor.domain.request import EditParams
from processor.observability.metrics import Metrics

__all__ = [
    "BatchProgress",
    "Faults",
    "InMemoryJobQueue",
    "InMemoryObjectStorage",
    "InMemoryWakeups",
    "InMemoryWebhookOutbox",
    "InMemoryWebhookReceiver",
    "ManualClock",
    "QueueCall",
    "QueueRow",
    "StandInEditor",
    "eventually",
    "fast_config",
    "running_worker",
]

T = TypeVar("T")


def fast_config(**overrides: Any) -> WorkerConfig:
    """A ``WorkerConfig`` with millisecond timings (heartbeat 50 ms, sweep 50 ms, grace 1 s)."""
    config = WorkerConfig(
        worker_id="test-worker",
        lease_seconds=30,
        heartbeat_interval_seconds=0.05,
        progress_interval_seconds=0.01,
        sweep_interval_seconds=0.05,
        worker_concurrency=1,
        shutdown_grace_seconds=1.0,
        image_limits=ImageLimits(min_side=1),
    )
    return replace(config, **overrides)


class StandInEditor:
    """An ``Editor`` without a model: ``num_inference_steps`` steps, each reported, then a plain image.

    Deterministic moments for tests, on threading events (the worker runs editors in a thread):
    ``started`` is set when an edit begins; with ``hold_at=N`` the edit stops after step N,
    sets ``held`` and waits until ``proceed`` is set or the edit is canceled. A set ``cancel``
    event ends the edit with ``EditCancelled`` between steps, as the real editors do.
    ``fail_next(error)`` makes the next edit raise ``error`` (``ModelError``, ``RuntimeError``...).
    ``step_seconds`` stands for the model's time per step (the wait ends early on cancel);
    ``canceled`` is set when an edit ends with ``EditCancelled``.

    Like a real editor it runs one edit at a time (its "device"): a second caller waits, and a cancel
    ends that wait. ``calls`` and ``started`` count edits that began on the device.
    """

    def __init__(
        self,
        *,
        hold_at: int | None = None,
        step_seconds: float = 0.0,
        color: tuple[int, int, int] = (40, 90, 200),
        size: int = 64,
    ) -> None:
        self.hold_at = hold_at
        self.step_seconds = step_seconds
        self.color = color
        self.size = size
        self.started = threading.Event()
        self.held = threading.Event()
        self.proceed = threading.Event()
        self.canceled = threading.Event()
        self.calls = 0
        self.closed = False
        self._failures: list[BaseException] = []
        self._lock = threading.Lock()
        self._device = threading.Lock()

    def fail_next(self, error: BaseException) -> None:
        with self._lock:
            self._failures.append(error)

    def describe(self) -> Mapping[str, Any]:
        return {"model_id": "stand-in", "revision": None, "device": "cpu", "dtype": "none"}

    def close(self) -> None:
        self.closed = True

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
    ) -> EditResult:
        started = time.perf_counter()
        stop = cancel or threading.Event()
        while not self._device.acquire(timeout=0.002):
            if stop.is_set():
                self.canceled.set()
                raise EditCancelled("canceled while it waited for the device")
        try:
            with self._lock:
                self.calls += 1
                failure = self._failures.pop(0) if self._failures else None
            self.started.set()
            if failure is not None:
                raise failure
            try:
                self._steps(params.num_inference_steps, on_progress, stop, previews)
            except EditCancelled:
                self.canceled.set()
                raise
        finally:
            self._device.release()
        total = params.num_inference_steps
        width = params.width or (images[0].width if images else self.size)
        height = params.height or (images[0].height if images else self.size)
        seconds = time.perf_counter() - started
        return EditResult(
            image=Image.new("RGB", (width, height), self.color),
            seed=params.seed if params.seed is not None else 0,
            width=width,
            height=height,
            num_inference_steps=total,
            timings={"denoising": seconds, "total": seconds},
            model=dict(self.describe()),
            base=None if images else params.base,
        )

    def _steps(
        self,
        total: int,
        on_progress: ProgressCallback | None,
        cancel: threading.Event,
        previews: PreviewSink | None,
    ) -> None:
        for step in range(1, total + 1):
            if (self.step_seconds and cancel.wait(self.step_seconds)) or cancel.is_set():
                raise EditCancelled(f"canceled before step {step}")
            if on_progress is not None:
                on_progress(step, total)
            if previews is not None and previews.wants(step, total):
                previews.deliver(self._preview(step, total))
            if step == self.hold_at:
                self.held.set()
                # Poll cancel while held: threading cannot wait on two events at once.
                while not self.proceed.wait(0.002):
                    if cancel.is_set():
                        raise EditCancelled(f"canceled at step {step}")

    def _preview(self, step: int, total: int) -> Preview:
        """A plain picture at an eighth of the output's side, as the diffusers engine's are."""
        side = max(1, self.size // 8)
        buffer = io.BytesIO()
        Image.new("RGB", (side, side), self.color).save(buffer, format="WEBP")
        return Preview(step, total, buffer.getvalue(), "image/webp", side, side)


async def eventually(predicate: Callable[[], T], *, timeout: float = 60.0, what: str = "") -> T:
    """Poll ``predicate`` on the event loop until it returns something truthy; fail past ``timeout``
    (generous: a passing test waits only until the condition holds, and CI machines are shared)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def running_worker(
    queue: InMemoryJobQueue,
    storage: InMemoryObjectStorage,
    editor: Editor,
    config: WorkerConfig | None = None,
    *,
    metrics: Metrics | None = None,
    wakeups: bool = True,
) -> AsyncIterator[Worker]:
    """Open the adapters, run a ``Worker`` (woken by the queue's notifications unless
    ``wakeups=False``: then only its sweep finds work), and drain it on exit."""
    await queue.open()
    await storage.open()
    worker = Worker(
        queue=queue, storage=storage, editor=editor, config=config or fast_config(), metrics=metrics
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop), name="test-worker")]
    if wakeups:
        listener = InMemoryWakeups(queue).run(
            on_queued=lambda _id: worker.wake(), on_cancel=worker.cancel, stop=stop
        )
        tasks.append(asyncio.create_task(listener, name="test-wakeups"))
    try:
        yield worker
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await queue.close()
        await storage.close()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
