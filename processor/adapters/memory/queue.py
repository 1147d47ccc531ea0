"""``JobQueue`` in memory: the ``edit_requests`` state machine of the SQL migrations, in Python.

Each port method does what its SQL function does (``claim_edit_request``,
``heartbeat_edit_request``, ``complete/fail/release_edit_request``,
``requeue_expired_edit_requests``, ``edit_request_queue_stats``): the same statuses, the
attempt counted at claim, back-off on retryable failures, priority then age, fencing by
owner and status, lapsed leases recovered. Time comes from an injectable clock
(``ManualClock``), so tests let leases lapse without sleeping. After every change the row is
checked against the table's CHECK constraints, so a state the database would refuse fails
here too. The same conformance tests (``tests/test_port_job_queue.py``) run against this and
``PostgresJobQueue``.

Beyond the port, for tests: ``enqueue`` (an app's insert), ``enqueue_batch`` (an ``edit_batches``
insert: one request per image, all or none), ``cancel``, ``cancel_batch`` and ``retry`` (the SQL
functions of the same names), ``row``/``rows``/``batch`` (read the state), ``subscribe`` (the
notifications ``InMemoryWakeups`` delivers), ``faults`` and ``calls``.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from processor.adapters.memory.clock import Clock, wall_clock
from processor.adapters.memory.faults import Faults
from processor.adapters.memory.storage import InMemoryObjectStorage
from processor.domain.errors import InvalidInput
from processor.domain.params import check_request, params_from_mapping
from processor.domain.ports.queue import EditJob, HeartbeatAnswer
from processor.domain.request import PARAM_FIELDS, EditParams
from processor.domain.rules import (
    DEFAULT_MAX_ATTEMPTS,
    INPUT_BUCKET,
    MAX_BATCH_SIZE,
    MAX_IMAGES,
    OUTPUT_BUCKET,
    REQUEST_BACKOFF_JITTER,
    STATUSES,
    TERMINAL,
    request_backoff_seconds,
)

Status = Literal["awaiting_image", "queued", "processing", "succeeded", "failed", "canceled"]

LEASE_EXPIRED = "lease expired: the worker stopped answering"
LEASE_EXPIRED_LAST = "lease expired on the last attempt: the worker stopped answering"


@dataclass
class QueueRow:
    """One ``edit_requests`` row: the request whole (``params``, each field a column in SQL), then the
    row's own columns, with the same defaults."""

    id: uuid.UUID
    params: EditParams
    input_paths: tuple[str, ...]
    user_id: uuid.UUID | None = None
    status: Status = "queued"
    input_bucket: str = INPUT_BUCKET
    output_bucket: str = OUTPUT_BUCKET
    output_path: str | None = None
    progress: float = 0.0
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    next_attempt_at: datetime | None = None
    claimed_by: str | None = None
    lease_expires_at: datetime | None = None
    error: str | None = None
    error_code: str | None = None
    result: dict[str, Any] | None = None
    priority: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    batch_id: uuid.UUID | None = None
    preview_path: str | None = None
    preview_step: int | None = None


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """``edit_batch_progress``: a batch's requests by status, how many finished, and its progress
    (the mean of its requests' progress, a finished one counting 1)."""

    id: uuid.UUID
    requests: int
    counts: Mapping[Status, int]
    finished: int
    progress: float


def check_constraints(row: QueueRow) -> None:
    """The table's CHECK constraints; ``ValueError`` names the one a row breaks."""
    # The request's own CHECKs are the request rules (the parity tests prove SQL holds the same).
    try:
        check_request(row.params, len(row.input_paths))
    except InvalidInput as refused:
        raise ValueError(f"edit_requests row {row.id} violates the request rules: {refused}") from refused
    rules: list[tuple[str, bool]] = [
        ("edit_requests_input_paths_valid", _paths_valid(row.input_paths)),
        ("edit_requests_progress_range", 0 <= row.progress <= 1),
        ("edit_requests_attempts_range", 0 <= row.attempts <= row.max_attempts),
        ("edit_requests_max_attempts_range", 1 <= row.max_attempts <= 20),
        ("edit_requests_priority_range", -100 <= row.priority <= 100),
        (
            "edit_requests_processing_is_owned",
            row.status != "processing"
            or (
                row.claimed_by is not None and row.lease_expires_at is not None and row.started_at is not None
            ),
        ),
        (
            "edit_requests_waiting_is_unowned",
            row.status not in ("awaiting_image", "queued")
            or (row.lease_expires_at is None and row.finished_at is None),
        ),
        (
            "edit_requests_succeeded_has_output",
            row.status != "succeeded"
            or (row.output_path is not None and row.finished_at is not None and row.progress == 1),
        ),
        (
            "edit_requests_failed_has_reason",
            row.status != "failed" or (row.error is not None and row.finished_at is not None),
        ),
        ("edit_requests_canceled_is_finished", row.status != "canceled" or row.finished_at is not None),
        ("edit_requests_only_success_has_output", row.output_path is None or row.status == "succeeded"),
        ("edit_requests_preview_step_range", row.preview_step is None or 1 <= row.preview_step <= 100),
        ("edit_requests_preview_together", (row.preview_path is None) == (row.preview_step is None)),
    ]
    broken = [name for name, holds in rules if not holds]
    if broken:
        raise ValueError(f"edit_requests row {row.id} violates check constraint {broken[0]}")


def _paths_valid(paths: Sequence[str]) -> bool:
    return 1 <= len(paths) <= MAX_IMAGES and all(
        1 <= len(path) <= 1024
        and not path.startswith("/")
        and "//" not in path
        and not any(part in (".", "..") for part in path.split("/"))
        for path in paths
    )


def backoff_seconds(attempts: int, jitter: float) -> float:
    """``edit_request_backoff``: the nominal back-off (``rules.request_backoff_seconds``) times a factor
    in ``1 ± REQUEST_BACKOFF_JITTER``, ``jitter`` drawn from ``[0, 1)``."""
    return request_backoff_seconds(attempts) * (
        1 - REQUEST_BACKOFF_JITTER + 2 * REQUEST_BACKOFF_JITTER * jitter
    )


@dataclass(frozen=True, slots=True)
class QueueCall:
    """One port call, as ``calls`` records it (``at`` is ``time.monotonic()``)."""

    name: str
    job_id: uuid.UUID | None
    worker_id: str | None
    at: float
    args: Mapping[str, Any] = field(default_factory=dict)


QueuedListener = Callable[[uuid.UUID], None]
CancelListener = Callable[[uuid.UUID], None]


class InMemoryJobQueue:
    """The ``edit_requests`` state machine in one process. Thread-safe; port calls never wait.

    With ``storage``, a request whose inputs are not all stored starts ``awaiting_image`` and is
    queued when the last one is uploaded, as the database's triggers on ``storage.objects`` do;
    without it, every input counts as stored. ``jitter`` draws the back-off's random factor in
    ``[0, 1)`` (``random.random`` by default).
    """

    def __init__(
        self,
        *,
        clock: Clock = wall_clock,
        storage: InMemoryObjectStorage | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._storage = storage
        self._jitter = jitter
        self._rows: dict[uuid.UUID, QueueRow] = {}
        self._lock = threading.RLock()
        self._opened = False
        self._on_queued: list[QueuedListener] = []
        self._on_cancel: list[CancelListener] = []
        self._order: dict[uuid.UUID, int] = {}
        self._idle_workers: dict[str, datetime] = {}
        """``edit_idle_workers``: workers whose last claim for any row found none, and when."""
        self.faults = Faults("database_unavailable")
        self.calls: list[QueueCall] = []
        if storage is not None:
            storage.on_stored(self._object_stored)

    # --- The port ---------------------------------------------------------------------------------
    async def open(self) -> None:
        self._opened = True

    async def close(self) -> None:
        self._opened = False

    async def ping(self) -> None:
        self._call("ping")

    async def stats(self) -> tuple[dict[str, int], float]:
        self._call("stats")
        with self._lock:
            now = self._clock()
            depth: dict[str, int] = {}
            for row in self._rows.values():
                depth[row.status] = depth.get(row.status, 0) + 1
            due = [row.created_at for row in self._rows.values() if self._due(row, now) and row.created_at]
            oldest = max(0.0, (now - min(due)).total_seconds()) if due else 0.0
        return depth, oldest

    async def ensure_lease_sweep(self) -> str:
        """``scheduled``: lapsed leases are recovered by the claim itself here, as the database's
        scheduled sweep does for PostgreSQL; there is nothing else to schedule."""
        self._call("ensure_lease_sweep")
        return "scheduled"

    async def claim(
        self, worker_id: str, lease_seconds: int, request_id: uuid.UUID | None = None
    ) -> EditJob | None:
        self._call("claim", request_id, worker_id, lease_seconds=lease_seconds)
        if not worker_id:
            raise ValueError("claim_edit_request: p_worker_id is required")
        if lease_seconds < 1:
            raise ValueError("claim_edit_request: p_lease_seconds must be positive")
        with self._lock:
            now = self._clock()
            candidates = [row for row in self._rows.values() if request_id is None or row.id == request_id]
            # A lapsed lease is recovered first (its owner is gone)...
            lapsed = [
                row
                for row in candidates
                if row.status == "processing"
                and row.lease_expires_at is not None
                and row.lease_expires_at < now
                and row.attempts < row.max_attempts
            ]
            if lapsed:
                row: QueueRow | None = min(lapsed, key=lambda r: r.lease_expires_at or now)
            else:
                # ...then the next due queued row, by priority then age.
                due = self._due_in_order(candidates, now)
                row = due[0] if due else None
            if request_id is None:
                # Idle when nothing was found, busy again when something was (claim_ahead reads it).
                if row is None:
                    self._idle_workers[worker_id] = now
                else:
                    self._idle_workers.pop(worker_id, None)
            if row is None:
                return None
            return self._take(row, worker_id, lease_seconds, now)

    async def claim_ahead(self, worker_id: str, lease_seconds: int, idle_seconds: float) -> EditJob | None:
        self._call("claim_ahead", None, worker_id, lease_seconds=lease_seconds, idle_seconds=idle_seconds)
        if not worker_id:
            raise ValueError("claim_edit_request_ahead: p_worker_id is required")
        if lease_seconds < 1:
            raise ValueError("claim_edit_request_ahead: p_lease_seconds must be positive")
        with self._lock:
            now = self._clock()
            fresh = now - timedelta(seconds=max(idle_seconds, 0.0))
            idle = sum(1 for other, seen in self._idle_workers.items() if other != worker_id and seen > fresh)
            due = self._due_in_order(self._rows.values(), now)
            # One due row, in claim order, left to each idle worker; the next one is this worker's.
            if len(due) <= idle:
                return None
            return self._take(due[idle], worker_id, lease_seconds, now)

    def idle_workers(self) -> list[str]:
        """The workers the queue counts as idle (their last claim for any row found none)."""
        with self._lock:
            return sorted(self._idle_workers)

    def _due_in_order(self, rows: Iterable[QueueRow], now: datetime) -> list[QueueRow]:
        return sorted(
            (row for row in rows if self._due(row, now)),
            key=lambda r: (-r.priority, r.created_at or now, self._order[r.id]),
        )

    def _take(self, row: QueueRow, worker_id: str, lease_seconds: int, now: datetime) -> EditJob:
        """The claim's update: the attempt counted, the lease started. Under the lock."""
        self._update(
            row,
            status="processing",
            claimed_by=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=row.attempts + 1,
            started_at=row.started_at or now,
            next_attempt_at=None,
            progress=0.0,
            # edit_requests_reset_preview: each attempt's previews start afresh.
            preview_path=None,
            preview_step=None,
        )
        return _job(row)

    async def heartbeat(
        self, job_id: uuid.UUID, worker_id: str, progress: float | None, lease_seconds: int
    ) -> HeartbeatAnswer:
        self._call("heartbeat", job_id, worker_id, progress=progress, lease_seconds=lease_seconds)
        with self._lock:
            row = self._rows.get(job_id)
            if row is None or row.claimed_by != worker_id:
                return "lost"
            if row.status == "processing":
                reported = row.progress if progress is None else min(1.0, max(0.0, progress))
                lease = timedelta(seconds=max(lease_seconds, 1))
                moved = max(row.progress, reported) != row.progress
                left = (row.lease_expires_at - self._clock()) if row.lease_expires_at else timedelta(0)
                if not moved and left > lease / 2:
                    return "ok"  # as the SQL: nothing visible changed and the lease has time left
                changes: dict[str, Any] = {"lease_expires_at": self._clock() + lease}
                if moved:
                    changes["progress"] = max(row.progress, reported)
                # A lease-only renewal leaves updated_at alone (the time of the last visible change).
                self._update(row, touch=moved, **changes)
                return "ok"
            return "canceled" if row.status == "canceled" else "lost"

    async def complete(
        self, job_id: uuid.UUID, worker_id: str, output_path: str, result: Mapping[str, Any]
    ) -> bool:
        self._call("complete", job_id, worker_id, output_path=output_path)
        # Stored as jsonb is: a JSON copy (and a result that is not JSON fails here too).
        stored = json.loads(json.dumps(dict(result)))
        with self._lock:
            row = self._owned(job_id, worker_id)
            if row is None:
                return False
            self._update(
                row,
                status="succeeded",
                progress=1.0,
                output_path=output_path,
                result=stored,
                finished_at=self._clock(),
                lease_expires_at=None,
                error=None,
                error_code=None,
            )
            return True

    async def fail(
        self, job_id: uuid.UUID, worker_id: str, error: str, *, retryable: bool, error_code: str
    ) -> str:
        self._call("fail", job_id, worker_id, error=error, retryable=retryable, error_code=error_code)
        with self._lock:
            row = self._owned(job_id, worker_id)
            if row is None:
                return "lost"  # not the owner any more: nothing written
            now = self._clock()
            if retryable and row.attempts < row.max_attempts:
                self._update(
                    row,
                    status="queued",
                    claimed_by=None,
                    lease_expires_at=None,
                    next_attempt_at=now + timedelta(seconds=backoff_seconds(row.attempts, self._jitter())),
                    error=error,
                    error_code=error_code or "error",
                    progress=0.0,
                )
                return "queued"
            self._update(
                row,
                status="failed",
                lease_expires_at=None,
                finished_at=now,
                error=error or "unknown error",
                error_code=error_code or "error",
            )
            return "failed"

    async def preview(self, job_id: uuid.UUID, worker_id: str, path: str, step: int) -> bool:
        self._call("preview", job_id, worker_id, path=path, step=step)
        if not path or step < 1:
            raise ValueError("preview_edit_request: a path and a step of at least 1 are required")
        with self._lock:
            row = self._owned(job_id, worker_id)
            if row is None or (row.preview_step is not None and row.preview_step >= step):
                return False
            self._update(row, preview_path=path, preview_step=step)
            return True

    async def release(self, job_id: uuid.UUID, worker_id: str) -> bool:
        self._call("release", job_id, worker_id)
        with self._lock:
            row = self._owned(job_id, worker_id)
            if row is None:
                return False
            self._update(
                row,
                status="queued",
                claimed_by=None,
                lease_expires_at=None,
                next_attempt_at=None,
                attempts=max(row.attempts - 1, 0),
                progress=0.0,
            )
            return True

    async def requeue_expired(self) -> int:
        self._call("requeue_expired")
        changed = 0
        with self._lock:
            now = self._clock()
            for row in list(self._rows.values()):
                lapsed = (
                    row.status == "processing"
                    and row.lease_expires_at is not None
                    and row.lease_expires_at < now
                )
                if lapsed and row.attempts < row.max_attempts:
                    self._update(
                        row,
                        status="queued",
                        claimed_by=None,
                        lease_expires_at=None,
                        progress=0.0,
                        error=LEASE_EXPIRED,
                        error_code="lease_expired",
                    )
                elif lapsed:
                    self._update(
                        row,
                        status="failed",
                        lease_expires_at=None,
                        finished_at=now,
                        error=LEASE_EXPIRED_LAST,
                        error_code="lease_expired",
                    )
                elif row.status == "awaiting_image" and self._inputs_present(row):
                    self._update(row, status="queued")
                elif (
                    row.status == "queued" and row.next_attempt_at is not None and row.next_attempt_at <= now
                ):
                    self._update(row, next_attempt_at=None)
                else:
                    continue
                changed += 1
        return changed

    # --- For tests ----------------------------------------------------------------------------------
    def enqueue(
        self,
        prompt: str = "make it blue",
        input_paths: Sequence[str] | None = None,
        *,
        id: uuid.UUID | None = None,
        params: EditParams | None = None,
        **columns: Any,
    ) -> uuid.UUID:
        """Insert a request as an app would; returns its id. The request is ``params`` whole, or
        ``prompt`` and any of ``EditParams``' fields among ``columns`` (``num_inference_steps``,
        ``speed``, ``loras``...); the other ``columns`` are ``QueueRow``'s (``user_id``, ``priority``,
        ``max_attempts``...)."""
        request = _split(prompt, params, columns)
        request_id = id or uuid.uuid4()
        paths = (
            tuple(input_paths)
            if input_paths is not None
            else (f"{columns.get('user_id') or 'u'}/{request_id}.png",)
        )
        with self._lock:
            if request_id in self._rows:
                raise ValueError(f"duplicate key: edit_requests row {request_id} exists")
            now = self._clock()
            row = QueueRow(
                id=request_id,
                params=request,
                input_paths=paths,
                created_at=columns.pop("created_at", now),
                updated_at=now,
                **columns,
            )
            if row.status in ("queued", "awaiting_image"):
                row.status = "queued" if self._inputs_present(row) else "awaiting_image"
            check_constraints(row)
            self._rows[request_id] = row
            # Rows made in one clock tick are claimed in insertion order (SQL breaks ties by id).
            self._order[request_id] = len(self._order)
            if row.status == "queued":
                self._notify_queued(row)
        return request_id

    def enqueue_batch(
        self,
        prompt: str = "make it blue",
        input_paths: Sequence[str] = (),
        *,
        reference_paths: Sequence[str] = (),
        params: EditParams | None = None,
        **columns: Any,
    ) -> tuple[uuid.UUID, list[uuid.UUID]]:
        """Insert a batch as an app would (``edit_batches``): one request per input path, each with
        ``reference_paths`` after its image and the same ``columns``. Every row is checked before any
        is stored, so a refused batch leaves nothing. Returns the batch's id and its requests' ids."""
        if not 1 <= len(input_paths) <= MAX_BATCH_SIZE:
            name = "edit_batches_not_empty" if not input_paths else "edit_batches_size"
            raise ValueError(f"edit_batches row violates check constraint {name}")
        request = _split(prompt, params, columns)
        batch_id = uuid.uuid4()
        now = self._clock()
        rows = [
            QueueRow(
                id=uuid.uuid4(),
                params=request,
                input_paths=(path, *reference_paths),
                batch_id=batch_id,
                created_at=now,
                updated_at=now,
                **columns,
            )
            for path in input_paths
        ]
        for row in rows:
            check_constraints(row)
        for row in rows:
            fields = {name: getattr(row, name) for name in ("created_at", "batch_id", *columns)}
            self.enqueue(prompt, row.input_paths, id=row.id, params=request, **fields)
        return batch_id, [row.id for row in rows]

    def batch(self, batch_id: uuid.UUID) -> BatchProgress:
        """The batch's counts and progress, as ``edit_batch_progress`` shows them."""
        with self._lock:
            rows = [row for row in self._rows.values() if row.batch_id == batch_id]
        counts: dict[Status, int] = dict.fromkeys(STATUSES, 0)
        for row in rows:
            counts[row.status] += 1
        done = [1.0 if row.status in TERMINAL else row.progress for row in rows]
        return BatchProgress(
            id=batch_id,
            requests=len(rows),
            counts=counts,
            finished=sum(counts[status] for status in TERMINAL),
            progress=sum(done) / len(done) if done else 0.0,
        )

    def cancel_batch(self, batch_id: uuid.UUID) -> int:
        """``cancel_edit_batch``: ``cancel`` on each of the batch's requests that has not finished."""
        with self._lock:
            ids = sorted(row.id for row in self._rows.values() if row.batch_id == batch_id)
        return sum(self.cancel(request_id) for request_id in ids)

    def cancel(self, request_id: uuid.UUID) -> bool:
        """``cancel_edit_request`` (as the service role): a waiting or running request ends canceled;
        ``claimed_by`` is kept, so its worker's next heartbeat answers ``canceled``."""
        with self._lock:
            row = self._rows.get(request_id)
            if row is None or row.status not in ("awaiting_image", "queued", "processing"):
                return False
            previous = row.status
            self._update(
                row,
                status="canceled",
                finished_at=self._clock(),
                lease_expires_at=None,
                error_code="canceled",
                next_attempt_at=None,
            )
            listeners = list(self._on_cancel) if previous == "processing" else []
        for listener in listeners:
            listener(request_id)
        return True

    def retry(self, request_id: uuid.UUID) -> bool:
        """``retry_edit_request``: a failed or canceled request starts over, attempts reset."""
        with self._lock:
            row = self._rows.get(request_id)
            if row is None or row.status not in ("failed", "canceled"):
                return False
            self._update(
                row,
                status="queued" if self._inputs_present(row) else "awaiting_image",
                attempts=0,
                progress=0.0,
                error=None,
                error_code=None,
                claimed_by=None,
                lease_expires_at=None,
                next_attempt_at=None,
                finished_at=None,
                started_at=None,
                output_path=None,
                result=None,
            )
            return True

    def row(self, request_id: uuid.UUID) -> QueueRow:
        """A copy of the row's current state (``KeyError`` when there is none)."""
        with self._lock:
            return copy.deepcopy(self._rows[request_id])

    def rows(self) -> list[QueueRow]:
        with self._lock:
            return [copy.deepcopy(row) for row in self._rows.values()]

    def subscribe(self, *, on_queued: QueuedListener, on_cancel: CancelListener) -> Callable[[], None]:
        """Hear what the database would ``NOTIFY``: a row became claimable now (``edit_requests``),
        a running row was canceled (``edit_requests_cancel``). Returns a function that stops it."""
        with self._lock:
            self._on_queued.append(on_queued)
            self._on_cancel.append(on_cancel)

        def unsubscribe() -> None:
            with self._lock:
                if on_queued in self._on_queued:
                    self._on_queued.remove(on_queued)
                if on_cancel in self._on_cancel:
                    self._on_cancel.remove(on_cancel)

        return unsubscribe

    def calls_to(self, name: str, job_id: uuid.UUID | None = None) -> list[QueueCall]:
        """The recorded calls of one method (and one job)."""
        with self._lock:
            return [c for c in self.calls if c.name == name and (job_id is None or c.job_id == job_id)]

    # --- Internals ----------------------------------------------------------------------------------
    def _call(
        self, name: str, job_id: uuid.UUID | None = None, worker_id: str | None = None, **args: Any
    ) -> None:
        if not self._opened:
            raise RuntimeError("InMemoryJobQueue.open() was not called")
        with self._lock:
            self.calls.append(QueueCall(name, job_id, worker_id, time.monotonic(), args))
        self.faults.check(name)

    def _owned(self, job_id: uuid.UUID, worker_id: str) -> QueueRow | None:
        row = self._rows.get(job_id)
        if row is None or row.claimed_by != worker_id or row.status != "processing":
            return None
        return row

    @staticmethod
    def _due(row: QueueRow, now: datetime) -> bool:
        return row.status == "queued" and (row.next_attempt_at is None or row.next_attempt_at <= now)

    def _inputs_present(self, row: QueueRow) -> bool:
        storage = self._storage
        return storage is None or all(storage.exists(row.input_bucket, path) for path in row.input_paths)

    def _update(self, row: QueueRow, *, touch: bool = True, **changes: Any) -> None:
        """Apply one transition, as one UPDATE: checked first, so a refused change leaves no trace."""
        before_status, before_next = row.status, row.next_attempt_at
        now = self._clock()
        if touch:
            changes["updated_at"] = now
        if changes.get("status") in ("succeeded", "failed", "canceled"):
            # edit_requests_reset_preview: a final request no longer points at a live preview.
            changes.update(preview_path=None, preview_step=None)
        check_constraints(replace(row, **changes))
        for name, value in changes.items():
            setattr(row, name, value)
        # edit_requests_wake_processor: into queued and due now, or a back-off that ended.
        if self._due(row, now) and (
            before_status != "queued" or (before_next is not None and row.next_attempt_at is None)
        ):
            self._notify_queued(row)

    def _notify_queued(self, row: QueueRow) -> None:
        for listener in list(self._on_queued):
            listener(row.id)

    def _object_stored(self, bucket: str, path: str) -> None:
        with self._lock:
            waiting = [
                row
                for row in self._rows.values()
                if row.status == "awaiting_image" and row.input_bucket == bucket and path in row.input_paths
            ]
            for row in waiting:
                if self._inputs_present(row):
                    self._update(row, status="queued")


def _job(row: QueueRow) -> EditJob:
    return EditJob(
        id=row.id,
        user_id=row.user_id,
        params=row.params,
        input_bucket=row.input_bucket,
        input_paths=row.input_paths,
        output_bucket=row.output_bucket,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        created_at=row.created_at,
    )


def _split(prompt: str, params: EditParams | None, columns: dict[str, Any]) -> EditParams:
    """The request of an ``enqueue``: ``params`` whole, or ``prompt`` and the parameters among
    ``columns`` (taken out of them), read by the one mapping every way in uses."""
    fields = {name: columns.pop(name) for name in _PARAM_NAMES if name in columns}
    if params is not None:
        if fields:
            raise TypeError(f"enqueue: give params or {', '.join(fields)}, not both")
        return params
    return params_from_mapping({"prompt": prompt, **fields})


_PARAM_NAMES = frozenset(item.name for item in PARAM_FIELDS) - {"prompt"}
