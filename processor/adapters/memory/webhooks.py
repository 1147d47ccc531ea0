"""``WebhookOutbox`` and ``WebhookSender`` in memory, for tests.

``InMemoryWebhookOutbox`` does what the SQL functions of ``supabase/schemas/40_webhooks.sql`` do
(``claim_edit_webhook_deliveries``, ``complete_edit_webhook_delivery``,
``fail_edit_webhook_delivery``, ``replay_edit_webhook_delivery``): an attempt counted at claim, a
lease, fencing by holder and status, back-off with jitter, dead after ``WEBHOOK_MAX_ATTEMPTS`` or a
permanent failure, a lapsed lease claimed again (dead when it lapsed on the last attempt), the kind
only in ``last_error``, and the fair share: at most so many in flight per endpoint and per user,
users with fewer in flight first, and an endpoint's circuit opened by consecutive failures (nothing
claimed while open, one probe when it half-opens, closed by a success). Time comes from an
injectable clock, so back-offs end and leases lapse without sleeping.
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
    endpoint_id: uuid.UUID
    user_id: uuid.UUID | None
    status: DeliveryStatus = "pending"
    attempts: int = 0
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    refusal: str | None = None
    """What ``edit_webhook_url_refusal`` would say of the URL at claim time (tests set it)."""


@dataclass
class Circuit:
    """One ``edit_webhook_circuits`` row: failed attempts in a row, and until when it is open."""

    consecutive_failures: int = 0
    open_until: datetime | None = None


class InMemoryWebhookOutbox:
    def __init__(
        self,
        *,
        clock: Clock = wall_clock,
        seed: int | None = None,
        max_in_flight_per_endpoint: int = rules.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT,
        max_in_flight_per_user: int = rules.WEBHOOK_MAX_IN_FLIGHT_PER_USER,
    ) -> None:
        self._clock = clock
        self._random = random.Random(seed)
        self._rows: dict[uuid.UUID, DeliveryRow] = {}
        self.circuits: dict[uuid.UUID, Circuit] = {}
        """By endpoint; none: its last attempt succeeded (or it never failed)."""
        self.max_in_flight_per_endpoint = max_in_flight_per_endpoint
        self.max_in_flight_per_user = max_in_flight_per_user
        self._lock = threading.Lock()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # --- Beyond the port, for tests ---------------------------------------------------------------

    def add(
        self,
        url: str,
        secret: str,
        payload: Mapping[str, Any],
        *,
        request_id: uuid.UUID | None = None,
        endpoint_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """What the trigger does when a request naming an endpoint becomes final. The endpoint is the
        URL's unless given; the user is None (one user) unless given."""
        row = DeliveryRow(
            uuid.uuid4(),
            request_id or uuid.uuid4(),
            url,
            secret,
            dict(payload),
            self._clock(),
            endpoint_id or uuid.uuid5(uuid.NAMESPACE_URL, url),
            user_id,
        )
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
            self.circuits.pop(row.endpoint_id, None)  # the operator says the receiver is back
            return True

    # --- The port --------------------------------------------------------------------------------------

    async def claim(self, worker_id: str, limit: int, lease_seconds: int) -> list[WebhookDelivery]:
        now = self._clock()
        if limit < 1:
            return []
        with self._lock:
            for row in self._rows.values():
                if row.status == "delivering" and row.claimed_until and row.claimed_until < now:
                    if row.attempts >= rules.WEBHOOK_MAX_ATTEMPTS:
                        row.status = "dead"
                        row.last_error = webhook_urls.WebhookFailure.LEASE_EXPIRED
                    else:
                        row.status = "pending"  # due as it was; its old holder is fenced
                    row.claimed_by = row.claimed_until = None
            in_flight = [r for r in self._rows.values() if r.status == "delivering"]
            candidates: list[tuple[DeliveryRow, int]] = []
            for endpoint_id in {r.endpoint_id for r in self._rows.values() if r.status == "pending"}:
                due = sorted(
                    (
                        r
                        for r in self._rows.values()
                        if r.endpoint_id == endpoint_id and r.status == "pending" and r.next_attempt_at <= now
                    ),
                    key=lambda r: (r.next_attempt_at, str(r.id)),
                )
                free = self._places(endpoint_id, now) - sum(r.endpoint_id == endpoint_id for r in in_flight)
                candidates += [(row, turn) for turn, row in enumerate(due[: max(min(free, limit), 0)], 1)]
            # Round robin across users, counting what each has in flight (claim_edit_webhook_deliveries).
            turns: list[tuple[int, DeliveryRow]] = []
            for user_id in {row.user_id for row, _ in candidates}:
                mine = sorted(
                    ((row, turn) for row, turn in candidates if row.user_id == user_id),
                    key=lambda c: (c[1], c[0].next_attempt_at, str(c[0].id)),
                )
                busy = sum(r.user_id == user_id for r in in_flight)
                turns += [(busy + rank, row) for rank, (row, _) in enumerate(mine, 1)]
            chosen = sorted(
                (t for t in turns if t[0] <= self.max_in_flight_per_user),
                key=lambda t: (t[0], t[1].next_attempt_at, str(t[1].id)),
            )[:limit]
            claimed = [row for _, row in chosen]
            for row in claimed:
                row.status, row.claimed_by = "delivering", worker_id
                row.claimed_until = now + timedelta(seconds=max(lease_seconds, 1))
                row.attempts += 1
            return [
                WebhookDelivery(
                    r.id, r.request_id, r.url, r.secret, dict(r.payload), r.attempts, r.refusal, r.endpoint_id
                )
                for r in claimed
            ]

    def _places(self, endpoint_id: uuid.UUID, now: datetime) -> int:
        """In flight an endpoint may have: none while its circuit is open, one probe when it half-opens."""
        circuit = self.circuits.get(endpoint_id)
        if circuit is not None and circuit.open_until is not None and circuit.open_until > now:
            return 0
        if circuit is not None and circuit.consecutive_failures >= rules.WEBHOOK_CIRCUIT_FAILURES:
            return 1
        return self.max_in_flight_per_endpoint

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
            self.circuits.pop(row.endpoint_id, None)  # a success closes the circuit
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
                row.status, row.next_attempt_at = "pending", self._clock() + self._backoff(row.attempts)
            row.last_status_code, row.last_error = status_code, webhook_urls.webhook_failure_kind(error)
            row.claimed_by = row.claimed_until = None
            if not permanent:  # a refused URL costs no one a slot: it does not count
                circuit = self.circuits.setdefault(row.endpoint_id, Circuit())
                circuit.consecutive_failures += 1
                circuit.open_until = (
                    self._clock() + self._backoff(circuit.consecutive_failures)
                    if circuit.consecutive_failures >= rules.WEBHOOK_CIRCUIT_FAILURES
                    else None
                )
            return row.status

    def _backoff(self, attempts: int) -> timedelta:
        """``edit_webhook_backoff``: the nominal wait times a jitter of ±``WEBHOOK_BACKOFF_JITTER``."""
        jitter = 1 + rules.WEBHOOK_BACKOFF_JITTER * (2 * self._random.random() - 1)
        return timedelta(seconds=rules.webhook_backoff_seconds(attempts) * jitter)

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
