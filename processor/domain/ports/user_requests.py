"""The user requests port: ``edit_requests`` and ``edit_batches`` as one user sees them, under RLS."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from processor.domain.request import NO_OPTIONS, EditParams, RequestOptions
from processor.domain.users import User


class UserRequests(Protocol):
    """``edit_requests`` as one user sees it: every call runs as that user, under RLS."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert(
        self,
        user: User,
        paths: Sequence[str],
        params: EditParams,
        options: RequestOptions = NO_OPTIONS,
        *,
        fingerprint: str | None = None,
    ) -> dict[str, Any]:
        """Insert the row with the request's parameters and options (each in the column of its name)
        and the body's ``fingerprint`` (``domain.idempotency``), and return it as ``get`` shows it; the
        server chooses its id. ``InvalidInput`` or ``LimitExceeded`` when the schema refuses it,
        ``KeyTaken`` when an earlier request of the user holds its ``idempotency_key``."""
        ...

    async def admit(self, user: User, params: EditParams, inputs: int, *, requests: int = 1) -> None:
        """Refuse, before any image is decoded or uploaded, what the insert of ``requests`` requests
        with ``params`` and ``inputs`` input images each would refuse for the user's limits now:
        ``LimitExceeded`` (``quota_exceeded``, with when it would pass where that is known), or
        ``Unauthorized`` when the user no longer exists. Advisory (it takes no lock): the insert decides."""
        ...

    async def find(self, user: User, idempotency_key: str) -> dict[str, Any] | None:
        """The user's request holding ``idempotency_key`` (as ``get`` shows it), if any."""
        ...

    async def get(self, user: User, request_id: uuid.UUID) -> dict[str, Any] | None: ...

    async def recent(
        self,
        user: User,
        limit: int = 20,
        *,
        before: uuid.UUID | None = None,
        statuses: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """The user's requests, newest first (by ``created_at``, then id): at most ``limit``, created
        before the request ``before`` if given, of ``statuses`` if given."""
        ...

    async def cancel(self, user: User, request_id: uuid.UUID) -> bool: ...

    async def insert_batch(
        self,
        user: User,
        paths: Sequence[str],
        reference_paths: Sequence[str],
        params: EditParams,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> dict[str, Any]:
        """Insert a batch: one request per path, each with ``reference_paths`` after its image, all
        under the rules and limits of a single insert. ``InvalidInput`` or ``LimitExceeded`` when the
        schema refuses any of them, and then nothing is created; ``KeyTaken`` as ``insert``. The server
        chooses the batch's id. Returns ``get_batch``'s view."""
        ...

    async def find_batch(self, user: User, idempotency_key: str) -> dict[str, Any] | None:
        """The user's batch holding ``idempotency_key`` (as ``get_batch`` shows it, with its
        ``idempotency_fingerprint``), if any."""
        ...

    async def get_batch(self, user: User, batch_id: uuid.UUID) -> dict[str, Any] | None:
        """The batch's counts by status, ``finished`` and ``progress`` (``edit_batch_progress``), with
        ``items``: its requests as ``get`` shows them, in the batch's order; None when not theirs."""
        ...

    async def cancel_batch(self, user: User, batch_id: uuid.UUID) -> int:
        """Cancel the batch's requests that have not finished (``cancel_edit_batch``); how many."""
        ...
