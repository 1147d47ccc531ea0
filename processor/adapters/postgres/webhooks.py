"""``WebhookOutbox`` over PostgreSQL: each method calls one SQL function of migration 20261201000800.

The delivery state machine (leases, attempts, back-off with jitter, the dead letter) lives in SQL;
this adapter only calls it, on a pool of its own, so webhooks never take the queue's connections.
"""

from __future__ import annotations

import uuid

from processor.adapters.postgres.pool import Pool
from processor.domain.ports.webhooks import WebhookDelivery


class PostgresWebhookOutbox:
    """``edit_webhook_deliveries`` through claim / complete / fail."""

    def __init__(self, dsn: str, *, max_size: int = 2, timeout: float = 10.0) -> None:
        self._pool = Pool(dsn, min_size=1, max_size=max_size, timeout=timeout)

    async def open(self) -> None:
        await self._pool.open()

    async def close(self) -> None:
        await self._pool.close()

    async def claim(self, worker_id: str, limit: int, lease_seconds: int) -> list[WebhookDelivery]:
        rows = await self._pool.fetchall(
            "select * from public.claim_edit_webhook_deliveries(%s::text, %s::int, %s::int)",
            (worker_id, limit, lease_seconds),
        )
        return [
            WebhookDelivery(
                id=row["id"],
                request_id=row["request_id"],
                url=row["url"],
                secret=row["secret"],
                payload=row["payload"],
                attempts=row["attempts"],
                refusal=row["refusal"],
                endpoint_id=row["endpoint_id"],
            )
            for row in rows
        ]

    async def complete(self, delivery_id: uuid.UUID, worker_id: str, status_code: int) -> bool:
        rows = await self._pool.fetchall(
            "select public.complete_edit_webhook_delivery(%s::uuid, %s::text, %s::int) as done",
            (delivery_id, worker_id, status_code),
        )
        return bool(rows and rows[0]["done"])

    async def fail(
        self, delivery_id: uuid.UUID, worker_id: str, status_code: int | None, error: str, *, permanent: bool
    ) -> str:
        rows = await self._pool.fetchall(
            "select public.fail_edit_webhook_delivery(%s::uuid, %s::text, %s::int, %s::text, %s::boolean) as status",
            (delivery_id, worker_id, status_code, error, permanent),
        )
        status = rows[0]["status"] if rows else None
        return "lost" if status is None else str(status)
