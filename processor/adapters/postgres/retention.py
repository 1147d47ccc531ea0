"""``RetentionStore`` over PostgreSQL: the ``edit_retention_*`` functions of migration
``20261201001000_retention.sql``. What is due, what is live and what is gone is decided in SQL;
this adapter only calls it. Connection failures are ``TransientError`` (``database_unavailable``).
"""

from __future__ import annotations

from collections.abc import Sequence

from processor.adapters.postgres.pool import Pool
from processor.domain.ports.retention import RetentionCandidate, RetentionPolicy
from processor.domain.rules import RETENTION_LEASE_SECONDS


class PostgresRetentionStore:
    """Candidates, marks and the run lease; a small pool of its own (one run at a time)."""

    def __init__(self, dsn: str, *, timeout: float = 30.0) -> None:
        self._pool = Pool(dsn, min_size=0, max_size=1, timeout=timeout)

    async def open(self) -> None:
        await self._pool.open()

    async def close(self) -> None:
        await self._pool.close()

    async def candidates(self, worker_id: str, policy: RetentionPolicy) -> list[RetentionCandidate]:
        rows = await self._pool.fetchall(
            "select kind, bucket, path from public.edit_retention_candidates("
            "%s::text, %s::interval, %s::interval, %s::interval, %s::int, %s::int)",
            (
                worker_id,
                policy.input_age,
                policy.output_age,
                policy.orphan_grace,
                policy.batch_size,
                RETENTION_LEASE_SECONDS,
            ),
        )
        return [RetentionCandidate(row["kind"], row["bucket"], row["path"]) for row in rows]

    async def mark_deleted(self, bucket: str, paths: Sequence[str]) -> int:
        rows = await self._pool.fetchall(
            "select public.edit_retention_mark(%s::text, %s::text[]) as marked", (bucket, list(paths))
        )
        return int(rows[0]["marked"]) if rows else 0

    async def release(self, worker_id: str) -> None:
        await self._pool.fetchall("select public.edit_retention_release(%s::text)", (worker_id,))
