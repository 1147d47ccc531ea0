"""The completion-webhook ports: the outbox the final statuses fill, and the sender that POSTs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from processor.domain.webhook_urls import webhook_failure_kind


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """A claimed ``edit_webhook_deliveries`` row with its endpoint: one attempt to send."""

    id: uuid.UUID
    """Also the ``webhook-id`` header: the same on every attempt, so receivers drop duplicates."""
    request_id: uuid.UUID
    url: str
    secret: str
    """The endpoint's ``whsec_…`` secret, read at claim time (a rotated secret signs the next attempt)."""
    payload: Mapping[str, Any]
    attempts: int
    """Attempts so far, this one included."""
    refusal: str | None = None
    """Why the URL is refused now (the database's allowlist and settings), or None."""
    endpoint_id: uuid.UUID | None = None
    """The endpoint it goes to (for the log; the database caps and backs off deliveries per endpoint)."""


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What one attempt came to: delivered (a 2xx), or why not."""

    status_code: int | None
    error: str | None = None
    """``kind: detail``, the kind a ``webhook_urls.WebhookFailure``; None when delivered."""
    permanent: bool = False
    """Retrying cannot help (the URL is refused): dead at once, replayable by operators."""

    @property
    def delivered(self) -> bool:
        return self.error is None

    @property
    def kind(self) -> str | None:
        """The failure's kind (what the owner may read); None when delivered."""
        return None if self.error is None else webhook_failure_kind(self.error)


class WebhookOutbox(Protocol):
    """``edit_webhook_deliveries``: the deliveries the requests' final statuses wrote, and their state."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, worker_id: str, limit: int, lease_seconds: int) -> list[WebhookDelivery]:
        """Up to ``limit`` due deliveries (or lapsed leases), leased to ``worker_id``; each counts an attempt."""
        ...

    async def complete(self, delivery_id: uuid.UUID, worker_id: str, status_code: int) -> bool:
        """Delivered; False when ``worker_id`` no longer holds it."""
        ...

    async def fail(
        self, delivery_id: uuid.UUID, worker_id: str, status_code: int | None, error: str, *, permanent: bool
    ) -> str:
        """``pending`` (retried after the back-off), ``dead`` (attempts used up, or ``permanent``),
        or ``lost`` when ``worker_id`` no longer holds it. Only the kind of ``error`` is stored
        (``webhook_failure_kind``): ``last_error`` is the owner's to read, the detail is not."""
        ...


class WebhookSender(Protocol):
    """POSTs one signed delivery to a receiver, under the URL rules; never raises for the receiver's faults."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer: ...
