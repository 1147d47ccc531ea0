"""One job in flight: its stop signal and its progress, shared by the pipeline and the heartbeat."""

from __future__ import annotations

import asyncio
import enum
import threading
import time
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
    stop_reason: StopReason | None = None
    progress: float = 0.0
    progress_changed: asyncio.Event = field(default_factory=asyncio.Event)
    preview_paths: set[str] = field(default_factory=set)
    """Objects this job's live previews were uploaded to (deleted when the job ends)."""

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
