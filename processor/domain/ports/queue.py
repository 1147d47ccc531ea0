"""The queue port: the ``edit_requests`` state machine the worker drives, and the job it hands out."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from processor.domain.request import EditParams

HeartbeatAnswer = Literal["ok", "lost", "canceled"]
"""What ``heartbeat_edit_request`` answers: keep going, abandon silently, or stop."""


@dataclass(frozen=True, slots=True)
class EditJob:
    """A claimed ``edit_requests`` row: the request whole (``params``, as it was sent) and the row's own
    fields the worker needs to run it."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    params: EditParams
    input_bucket: str
    input_paths: tuple[str, ...]
    output_bucket: str
    attempts: int
    max_attempts: int
    created_at: datetime | None = None


class JobQueue(Protocol):
    """The ``edit_requests`` state machine. Every method calls one SQL function."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Return when the backend answers; ``TransientError`` otherwise (for ``/readyz``)."""
        ...

    async def stats(self) -> tuple[dict[str, int], float]:
        """Row counts by status, and the age in seconds of the oldest due queued request."""
        ...

    async def ensure_lease_sweep(self) -> str:
        """Schedule the backend's own lease sweep where it can (pg_cron) and say how it stands:
        ``scheduled``, ``not_scheduled`` or ``pg_cron_missing``."""
        ...

    async def claim(
        self, worker_id: str, lease_seconds: int, request_id: uuid.UUID | None = None
    ) -> EditJob | None:
        """The next due row (or that row), or None. A claim for any row that finds none marks the worker
        idle; one that finds a row marks it busy again (``claim_ahead`` reads that)."""
        ...

    async def claim_ahead(self, worker_id: str, lease_seconds: int, idle_seconds: float) -> EditJob | None:
        """A busy worker's next job, claimed while its current edit ends (``claim_edit_request_ahead``):
        the due row after the first one for each other worker idle within ``idle_seconds``, or None."""
        ...

    async def heartbeat(
        self, job_id: uuid.UUID, worker_id: str, progress: float | None, lease_seconds: int
    ) -> HeartbeatAnswer: ...

    async def complete(
        self, job_id: uuid.UUID, worker_id: str, output_path: str, result: Mapping[str, Any]
    ) -> bool: ...

    async def fail(
        self, job_id: uuid.UUID, worker_id: str, error: str, *, retryable: bool, error_code: str
    ) -> str: ...

    async def preview(self, job_id: uuid.UUID, worker_id: str, path: str, step: int) -> bool:
        """Record the latest live preview (``preview_edit_request``): only the lease holder, while
        the row is processing, with a step above the last one; False when nothing was written."""
        ...

    async def release(self, job_id: uuid.UUID, worker_id: str) -> bool: ...

    async def requeue_expired(self) -> int: ...
