"""Completion webhooks: the delivery loop.

The database writes a delivery when a request becomes final (an outbox, in the same transaction);
this loop claims due deliveries, signs each per Standard Webhooks (``webhook-id`` is the delivery's
id, stable across attempts; ``webhook-timestamp`` the attempt's time; ``webhook-signature``
HMAC-SHA256 of ``id.timestamp.body`` with the endpoint's secret) and hands it to the sender. The
outcome goes back through the outbox's SQL functions (back-off, dead letter). It runs beside the
worker with its own connections and never waits on an edit, nor an edit on it. See docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from processor.domain.ports.webhooks import WebhookAnswer, WebhookDelivery, WebhookOutbox, WebhookSender
from processor.domain.rules import (
    DEFAULT_WEBHOOK_CONCURRENCY,
    DEFAULT_WEBHOOK_LEASE_SECONDS,
    DEFAULT_WEBHOOK_POLL_SECONDS,
)
from processor.domain.webhook_urls import WebhookFailure
from processor.observability.metrics import Metrics

log = logging.getLogger(__name__)

USER_AGENT = "qwen-edit-processor-webhooks/1"


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    worker_id: str
    concurrency: int = DEFAULT_WEBHOOK_CONCURRENCY
    """Deliveries in flight at once (a slow receiver holds one slot, not the loop)."""
    lease_seconds: int = DEFAULT_WEBHOOK_LEASE_SECONDS
    """How long a claimed delivery is this process's; after that another may send it again."""
    poll_interval_seconds: float = DEFAULT_WEBHOOK_POLL_SECONDS
    """How often due deliveries are looked for when there were none."""


def body_of(delivery: WebhookDelivery) -> bytes:
    """The exact bytes sent and signed: the payload as compact JSON."""
    return json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(delivery: WebhookDelivery, body: bytes, now: datetime) -> dict[str, str]:
    """Standard Webhooks headers for one attempt (the signature covers id, timestamp and body)."""
    signature = Webhook(delivery.secret).sign(str(delivery.id), now, body.decode())
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": str(delivery.id),
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


class WebhookDispatcher:
    """Claims, signs, sends and records deliveries until stopped."""

    def __init__(
        self,
        outbox: WebhookOutbox,
        sender: WebhookSender,
        config: WebhookConfig,
        *,
        clock: Callable[[], datetime] = wall_clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.outbox = outbox
        self.sender = sender
        self.config = config
        self._clock = clock
        self._metrics = metrics
        self._in_flight: set[asyncio.Task[WebhookAnswer]] = set()

    async def open(self) -> None:
        await self.outbox.open()
        await self.sender.open()

    async def close(self) -> None:
        await self.sender.close()
        await self.outbox.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep up to ``concurrency`` deliveries in flight until ``stop``; then let those finish
        (each is bounded by the sender's timeout; one cut short is sent again after its lease)."""
        try:
            while not stop.is_set():
                free = self.config.concurrency - len(self._in_flight)
                claimed = await self._claim(free) if free > 0 else []
                for delivery in claimed:
                    task = asyncio.create_task(self.deliver(delivery), name=f"webhook-{delivery.id}")
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
                # More may be due when every free slot was filled: go again as soon as one frees.
                busy = free > 0 and len(claimed) == free
                await self._pause(stop, until_slot_frees=busy or free <= 0)
        finally:
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _claim(self, limit: int) -> list[WebhookDelivery]:
        try:
            return await self.outbox.claim(self.config.worker_id, limit, self.config.lease_seconds)
        except Exception as exc:  # the database is down: edits report it; here, try again later
            log.warning("could not claim webhook deliveries: %s", exc)
            return []

    async def _pause(self, stop: asyncio.Event, *, until_slot_frees: bool) -> None:
        """Wait for a stop, the poll interval or (when busy) a delivery to finish."""
        slots: set[asyncio.Task[WebhookAnswer]] = set(self._in_flight) if until_slot_frees else set()
        if until_slot_frees and not slots:
            return  # every claimed delivery already finished: look again at once
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {stopped, *slots},
                timeout=None if slots else self.config.poll_interval_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopped.cancel()

    async def deliver(self, delivery: WebhookDelivery) -> WebhookAnswer:
        """One attempt: send it (unless the database refuses its URL now) and record the outcome."""
        if delivery.refusal is not None:
            answer = WebhookAnswer(None, delivery.refusal, permanent=True)
        else:
            body = body_of(delivery)
            started = time.perf_counter()
            try:
                answer = await self.sender.send(
                    delivery.url, signed_headers(delivery, body, self._clock()), body
                )
            except Exception as exc:  # a bug in the sender must not kill the loop, nor lose the delivery
                log.exception("webhook sender failed")
                answer = WebhookAnswer(None, f"{WebhookFailure.CONNECT_FAILED}: {type(exc).__name__}")
            if self._metrics is not None:
                self._metrics.webhook_attempt_seconds.observe(time.perf_counter() - started)
        try:
            outcome = await self._record(delivery, answer)
        except Exception as exc:
            # The lease lapses and the delivery is sent again: at least once, never lost.
            log.warning("could not record webhook delivery %s: %s", delivery.id, exc)
            outcome = "unrecorded"
        if self._metrics is not None:
            self._metrics.webhook_attempts.labels(outcome=outcome).inc()
        return answer

    async def _record(self, delivery: WebhookDelivery, answer: WebhookAnswer) -> str:
        """Write the outcome; returns it as the metric counts it."""
        worker = self.config.worker_id
        if answer.delivered:
            assert answer.status_code is not None
            await self.outbox.complete(delivery.id, worker, answer.status_code)
            log.info("webhook delivered", extra={"delivery": str(delivery.id), "status": answer.status_code})
            return "delivered"
        # The owner reads the kind (and the status); the detail, which can name the addresses an
        # allowlisted name resolves to or tell a closed port from a silent one, is for the log only.
        kind = answer.kind or "error"
        status = await self.outbox.fail(
            delivery.id, worker, answer.status_code, kind, permanent=answer.permanent
        )
        log.warning(
            "webhook attempt failed",
            extra={
                "delivery": str(delivery.id),
                "endpoint": str(delivery.endpoint_id) if delivery.endpoint_id else None,
                "attempt": delivery.attempts,
                "kind": kind,
                "error": answer.error,
                "now": status,
            },
        )
        return {"pending": "retrying", "dead": "dead", "lost": "lost"}.get(status, "unrecorded")


async def run_dispatcher(dispatcher: WebhookDispatcher, stop: asyncio.Event) -> None:
    """Open, run until ``stop``, close: the task ``ProcessorService`` starts."""
    try:
        await dispatcher.open()
        await dispatcher.run(stop)
    except Exception:
        # Deliveries wait in the outbox for the next process; the worker and its edits carry on.
        log.exception("the webhook delivery loop stopped")
    finally:
        with contextlib.suppress(Exception):
            await dispatcher.close()
