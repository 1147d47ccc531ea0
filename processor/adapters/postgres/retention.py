"""``RetentionStore`` over PostgreSQL: the ``edit_retention_*`` functions of migration
``20261201001000_retention.sql``. What is due, what is live and what is gone is decided in SQL;
this adapter only calls it. Connection failures are ``TransientError`` (``database_unavailable``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from processor.domain.errors import TransientError
from processor.domain.ports import RetentionCandidate, RetentionPolicy
from processor.domain.rules import RETENTION_LEASE_SECONDS, ReasonCode


class PostgresRetentionStore:
    """Candidates, marks and the run lease; a small pool of its own (one run at a time)."""

    def __init__(self, dsn: str, *, timeout: float = 30.0) -> None:
        self._timeout = timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = AsyncConnectionPool(
            dsn,
            connection_class=psycopg.AsyncConnection[DictRow],
            min_size=0,
            max_size=1,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            check=AsyncConnectionPool.check_connection,
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def _fetchall(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall()
        except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as exc:
            raise TransientError(
                f"database unavailable: {exc}", reason=ReasonCode.DATABASE_UNAVAILABLE
            ) from exc

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
