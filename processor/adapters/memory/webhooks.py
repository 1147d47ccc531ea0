"""``WebhookOutbox`` and ``WebhookSender`` in memory, for tests.

``InMemoryWebhookOutbox`` does what the SQL functions of migration 20261201000800 do
(``claim_edit_webhook_deliveries``, ``complete_edit_webhook_delivery``,
``fail_edit_webhook_delivery``, ``replay_edit_webhook_delivery``): an attempt counted at claim, a
lease, fencing by holder and status, back-off with jitter, dead after ``WEBHOOK_MAX_ATTEMPTS`` or a
permanent failure, a lapsed lease claimed again (dead when it lapsed on the last attempt). Time comes
from an injectable clock, so back-offs end and leases lapse without sleeping.
``tests/test_port_webhook_outbox.py`` runs the same conformance tests against this and
``PostgresWebhookOutbox``.

``InMemoryWebhookReceiver`` is a sender that records what it is given and answers from a script
(a status code, or a ``WebhookAnswer`` such as a timeout), for tests of the delivery loop.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from processor.adapters.memory.clock import Clock, wall_clock
from processor.domain import rules, webhook_urls
from processor.domain.ports.webhooks import WebhookAnswer, WebhookDelivery

DeliveryStatus = Literal["pending", "delivering", "delivered", "dead"]


@dataclass
class DeliveryRow:
    """One ``edit_webhook_deliveries`` row (with its endpoint's URL and secret)."""

    id: uuid.UUID
    request_id: uuid.UUID
    url: str
    secret: str
    payload: dict[str, Any]
    next_attempt_at: datetime
    status: DeliveryStatus = "pending"
    attempts: int = 0
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    refusal: str | None = None
    """What ``edit_webhook_url_refusal`` would say of the URL at claim time (tests set it)."""


class InMemoryWebhookOutbox:
    def __init__(self, *, clock: Clock = wall_clock, seed: int | None = None) -> None:
        self._clock = clock
        self._random = random.Random(seed)
        self._rows: dict[uuid.UUID, DeliveryRow] = {}
        self._lock = threading.Lock()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # --- Beyond the port, for tests ---------------------------------------------------------------

    def add(
        self, url: str, secret: str, payload: Mapping[str, Any], *, request_id: uuid.UUID | None = None
    ) -> uuid.UUID:
        """What the trigger does when a request naming an endpoint becomes final."""
        row = DeliveryRow(uuid.uuid4(), request_id or uuid.uuid4(), url, secret, dict(payload), self._clock())
        with self._lock:
            self._rows[row.id] = row
        return row.id

    def row(self, delivery_id: uuid.UUID) -> DeliveryRow:
        with self._lock:
            return self._rows[delivery_id]

    def rows(self) -> list[DeliveryRow]:
        with self._lock:
            return list(self._rows.values())

    def replay(self, delivery_id: uuid.UUID) -> bool:
        with self._lock:
            row = self._rows.get(delivery_id)
            if row is None or row.status not in ("dead", "delivered"):
                return False
            row.status, row.attempts, row.next_attempt_at = "pending", 0, self._clock()
            row.claimed_by = row.claimed_until = row.delivered_at = None
            return True

    # --- The port --------------------------------------------------------------------------------------

    async def claim(self, worker_id: str, limit: int, lease_seconds: int) -> list[WebhookDelivery]:
        now = self._clock()
        with self._lock:
            lapsed = [
                r
                for r in self._rows.values()
                if r.status == "delivering" and r.claimed_until and r.claimed_until < now
            ]
            for row in lapsed:
                if row.attempts >= rules.WEBHOOK_MAX_ATTEMPTS:
                    row.status, row.claimed_by, row.claimed_until = "dead", None, None
                    row.last_error = webhook_urls.WebhookFailure.LEASE_EXPIRED
            due = sorted(
                (
                    r
                    for r in self._rows.values()
                    if (r.status == "pending" and r.next_attempt_at <= now)
                    or (r.status == "delivering" and r.claimed_until is not None and r.claimed_until < now)
                ),
                key=lambda r: (r.next_attempt_at, str(r.id)),
            )[: max(limit, 0)]
            for row in due:
                row.status, row.claimed_by = "delivering", worker_id
                row.claimed_until = now + timedelta(seconds=max(lease_seconds, 1))
                row.attempts += 1
            return [
                WebhookDelivery(r.id, r.request_id, r.url, r.secret, dict(r.payload), r.attempts, r.refusal)
                for r in due
            ]

    async def complete(self, delivery_id: uuid.UUID, worker_id: str, status_code: int) -> bool:
        with self._lock:
            row = self._held(delivery_id, worker_id)
            if row is None:
                return False
            row.status, row.delivered_at, row.last_status_code, row.last_error = (
                "delivered",
                self._clock(),
                status_code,
                None,
            )
            row.claimed_by = row.claimed_until = None
            return True

    async def fail(
        self, delivery_id: uuid.UUID, worker_id: str, status_code: int | None, error: str, *, permanent: bool
    ) -> str:
        with self._lock:
            row = self._held(delivery_id, worker_id)
            if row is None:
                return "lost"
            if permanent or row.attempts >= rules.WEBHOOK_MAX_ATTEMPTS:
                row.status = "dead"
            else:
                jitter = 1 + rules.WEBHOOK_BACKOFF_JITTER * (2 * self._random.random() - 1)
                wait = rules.webhook_backoff_seconds(row.attempts) * jitter
                row.status, row.next_attempt_at = "pending", self._clock() + timedelta(seconds=wait)
            row.last_status_code, row.last_error = status_code, webhook_urls.webhook_failure_kind(error)
            row.claimed_by = row.claimed_until = None
            return row.status

    def _held(self, delivery_id: uuid.UUID, worker_id: str) -> DeliveryRow | None:
        row = self._rows.get(delivery_id)
        return row if row is not None and row.status == "delivering" and row.claimed_by == worker_id else None


@dataclass
class Sent:
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass
class InMemoryWebhookReceiver:
    """A ``WebhookSender`` that records each call and answers from ``script`` (then 200)."""

    script: list[int | WebhookAnswer] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
        self.sent.append(Sent(url, dict(headers), body))
        step = self.script.pop(0) if self.script else 200
        if isinstance(step, WebhookAnswer):
            return step
        if 200 <= step < 300:
            return WebhookAnswer(step)
        return WebhookAnswer(step, f"{webhook_urls.WebhookFailure.HTTP_STATUS}: {step}")
