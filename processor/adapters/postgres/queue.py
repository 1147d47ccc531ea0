"""``JobQueue`` over PostgreSQL: each method calls one SQL function of the migrations.

The state rules (who may claim, fencing by owner and status, back-off, attempts) live in
SQL, so apps, dashboards and workers see one truth; this adapter only calls them.
psycopg 3 async with a connection pool; connection failures become ``TransientError``
(reason ``database_unavailable``) so the worker backs off and the pool reconnects.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self, cast

from psycopg.types.json import Jsonb

from processor.adapters.postgres.pool import Pool
from processor.domain.params import params_from_mapping
from processor.domain.ports.queue import EditJob, HeartbeatAnswer


def _job_from_row(row: Mapping[str, Any]) -> EditJob:
    # The request's columns are named as its fields: read whole by the one mapping every way in uses.
    return EditJob(
        id=row["id"],
        user_id=row["user_id"],
        params=params_from_mapping(row),
        input_bucket=row["input_bucket"],
        input_paths=tuple(row["input_paths"]),
        output_bucket=row["output_bucket"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        created_at=row["created_at"],
    )


class PostgresJobQueue:
    """The ``edit_requests`` state machine through its SQL functions."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 4, timeout: float = 10.0) -> None:
        self._pool = Pool(dsn, min_size=min_size, max_size=max_size, timeout=timeout)

    async def open(self) -> None:
        await self._pool.open()

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def ping(self) -> None:
        await self._pool.fetchone("select 1 as ok", ())

    async def claim(
        self, worker_id: str, lease_seconds: int, request_id: uuid.UUID | None = None
    ) -> EditJob | None:
        row = await self._pool.fetchone(
            "select * from public.claim_edit_request(%s::text, %s::int, %s::uuid)",
            (worker_id, lease_seconds, request_id),
        )
        return None if row is None else _job_from_row(row)

    async def claim_ahead(self, worker_id: str, lease_seconds: int, idle_seconds: float) -> EditJob | None:
        row = await self._pool.fetchone(
            "select * from public.claim_edit_request_ahead(%s::text, %s::int, %s::real)",
            (worker_id, lease_seconds, idle_seconds),
        )
        return None if row is None else _job_from_row(row)

    async def heartbeat(
        self, job_id: uuid.UUID, worker_id: str, progress: float | None, lease_seconds: int
    ) -> HeartbeatAnswer:
        row = await self._pool.fetchone(
            "select public.heartbeat_edit_request(%s::uuid, %s::text, %s::real, %s::int) as answer",
            (job_id, worker_id, progress, lease_seconds),
        )
        assert row is not None
        return cast("HeartbeatAnswer", row["answer"])

    async def complete(
        self, job_id: uuid.UUID, worker_id: str, output_path: str, result: Mapping[str, Any]
    ) -> bool:
        row = await self._pool.fetchone(
            "select public.complete_edit_request(%s::uuid, %s::text, %s::text, %s::jsonb) as done",
            (job_id, worker_id, output_path, Jsonb(dict(result))),
        )
        return bool(row and row["done"])

    async def fail(
        self, job_id: uuid.UUID, worker_id: str, error: str, *, retryable: bool, error_code: str
    ) -> str:
        row = await self._pool.fetchone(
            "select public.fail_edit_request(%s::uuid, %s::text, %s::text, %s::boolean, %s::text) as status",
            (job_id, worker_id, error, retryable, error_code),
        )
        status = row["status"] if row else None
        return "lost" if status is None else str(status)

    async def preview(self, job_id: uuid.UUID, worker_id: str, path: str, step: int) -> bool:
        row = await self._pool.fetchone(
            "select public.preview_edit_request(%s::uuid, %s::text, %s::text, %s::int) as done",
            (job_id, worker_id, path, step),
        )
        return bool(row and row["done"])

    async def release(self, job_id: uuid.UUID, worker_id: str) -> bool:
        row = await self._pool.fetchone(
            "select public.release_edit_request(%s::uuid, %s::text) as done", (job_id, worker_id)
        )
        return bool(row and row["done"])

    async def requeue_expired(self) -> int:
        row = await self._pool.fetchone("select public.requeue_expired_edit_requests() as n", ())
        return int(row["n"]) if row else 0

    async def ensure_lease_sweep(self) -> str:
        """Schedule the pg_cron lease sweep if pg_cron exists (idempotent); the answer is
        ``scheduled``, ``not_scheduled`` or ``pg_cron_missing``."""
        row = await self._pool.fetchone("select public.ensure_edit_request_sweep() as sweep", ())
        return str(row["sweep"]) if row else "unknown"

    async def stats(self) -> tuple[dict[str, int], float]:
        """Depth by status and the age of the oldest due queued request (for /metrics)."""
        row = await self._pool.fetchone("select public.edit_request_queue_stats() as stats", ())
        stats = row["stats"] if row else {}
        depth = {str(k): int(v) for k, v in stats.get("depth", {}).items()}
        return depth, float(stats.get("oldest_queued_age_seconds", 0.0))
