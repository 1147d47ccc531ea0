"""One job in flight: its stop signal and its progress, shared by the pipeline and the heartbeat."""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from processor.domain.errors import EditCancelled
from processor.domain.ports.queue import EditJob

DENOISING_SHARE = 0.95
"""Share of the row's progress given to denoising; decode and upload take the rest."""


class StopReason(enum.Enum):
    """Why a running job was told to stop."""

    CANCELED = "canceled"  # the client canceled the request
    LOST = "lost"  # another worker owns the row now
    SHUTDOWN = "shutdown"  # this process is stopping


@dataclass
class ActiveJob:
    """A claimed job: set ``cancel`` to stop the model between steps; the first reason wins."""

    job: EditJob
    loop: asyncio.AbstractEventLoop
    claimed_at: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    """``cancel`` for the event loop's waits (set with it; ``stop`` runs on the loop)."""
    stop_reason: StopReason | None = None
    progress: float = 0.0
    progress_changed: asyncio.Event = field(default_factory=asyncio.Event)
    preview_paths: set[str] = field(default_factory=set)
    """Objects this job's live previews were uploaded to (deleted when the job ends)."""
    claim_started: float | None = None
    """When the claim that returned it was sent (``time.monotonic()``); None: not known."""
    ready_at: float | None = None
    """When it was downloaded, decoded and prepared, ready for the GPU."""
    has_turn: bool = False
    """Its edit runs on the GPU (it has reported a step)."""
    edit_done: bool = False
    """Its edit has returned (or it will not run one): the GPU is no longer its."""
    step: int = 0
    total_steps: int = 0
    step_at: float = 0.0
    """The last step reported, of how many, and when (``time.monotonic()`` in the model's thread)."""
    first_step_at: float = 0.0
    notify: Callable[[ActiveJob, str], None] | None = None
    """Told of every change the claim loop paces itself by: ``ready``, ``step``, ``edit_done``; on the
    event loop."""

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()
        self.stopped.set()

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
        self.loop.call_soon_threadsafe(self._stepped, step, total, time.monotonic())

    def _stepped(self, step: int, total: int, at: float) -> None:
        if step > self.step and not self.edit_done:
            if self.step == 0 or step == 1:
                self.first_step_at = at
            self.step, self.total_steps, self.step_at = step, total, at
            self.has_turn = True
            self._changed("step")
        self.report_progress(DENOISING_SHARE * step / total)

    def seconds_per_step(self) -> float | None:
        """This edit's own pace, once two steps were seen."""
        if self.step < 2 or self.step_at <= self.first_step_at:
            return None
        return (self.step_at - self.first_step_at) / (self.step - 1)

    def mark_ready(self) -> None:
        self.ready_at = time.monotonic()
        self._changed("ready")

    def edit_finished(self) -> None:
        """Its edit returned (or will not run): the GPU is no longer its."""
        if not self.edit_done:
            self.has_turn = False
            self.edit_done = True
            self._changed("edit_done")

    def _changed(self, event: str) -> None:
        if self.notify is not None:
            self.notify(self, event)
