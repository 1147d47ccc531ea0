"""``RetentionStore`` over PostgreSQL: the ``edit_retention_*`` functions of
``supabase/schemas/50_retention.sql``. What is due, what is live and what is gone is decided in SQL;
this adapter only calls it, each call under a statement timeout (``RETENTION_STATEMENT_TIMEOUT_SECONDS``):
a run bounded by design stays bounded if that design is ever defeated, and ends as a failed run.
Connection failures and timeouts are ``TransientError`` (``database_unavailable``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from processor.adapters.postgres.pool import Pool
from processor.domain.ports.retention import RetentionCandidate, RetentionPolicy
from processor.domain.rules import RETENTION_LEASE_SECONDS, RETENTION_STATEMENT_TIMEOUT_SECONDS


class PostgresRetentionStore:
    """Candidates, marks and the run lease; a small pool of its own (one run at a time)."""

    def __init__(
        self,
        dsn: str,
        *,
        timeout: float = 30.0,
        statement_timeout_seconds: float = RETENTION_STATEMENT_TIMEOUT_SECONDS,
    ) -> None:
        self._pool = Pool(dsn, min_size=0, max_size=1, timeout=timeout)
        self._statement_timeout_ms = max(1, round(statement_timeout_seconds * 1000))

    async def _fetchall(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        """One statement in a transaction of its own, under the statement timeout (``set_config``
        local to the transaction: the pooled connection keeps its defaults)."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "select set_config('statement_timeout', %s, true)", (str(self._statement_timeout_ms),)
            )
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()

    async def open(self) -> None:
        await self._pool.open()

    async def close(self) -> None:
        await self._pool.close()

    async def candidates(self, worker_id: str, policy: RetentionPolicy) -> list[RetentionCandidate]:
        rows = await self._fetchall(
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
        rows = await self._fetchall(
            "select public.edit_retention_mark(%s::text, %s::text[]) as marked", (bucket, list(paths))
        )
        return int(rows[0]["marked"]) if rows else 0

    async def release(self, worker_id: str) -> None:
        await self._fetchall("select public.edit_retention_release(%s::text)", (worker_id,))
