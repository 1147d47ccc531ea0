"""Submitting and following edit requests on behalf of a user: the core of the REST API and MCP tools.

Rows are written and read through the ``UserRequests`` port, which acts *as the user*
(the Postgres adapter sets the role and JWT claims as PostgREST would), so the schema's
RLS policies and column grants decide what a caller may do; this module adds no access
rules of its own. Input images are validated before anything is stored, then uploaded under the user's
folder in ``edit-inputs``; the row's insert trigger sees them and queues the request.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from processor.core.decoding import DecodePool
from processor.domain.errors import LimitExceeded
from processor.domain.images import ImageLimits
from processor.domain.params import check_batch, check_request
from processor.domain.ports import EditParams, ObjectStorage, RowChanges, UserRequests
from processor.domain.rules import (
    CHANGES_FALLBACK_SECONDS,
    CREATION_SIZE,
    INPUT_BUCKET,
    MAX_OUTPUT_BYTES,
    STREAM_MAX_SECONDS,
    TERMINAL,
    VALIDATION_THREADS,
    WAIT_MAX_SECONDS,
    WAITS_PER_USER,
    ReasonCode,
)
from processor.domain.users import User

_FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "WEBP": ("webp", "image/webp")}


class Submissions:
    """Validate, store and submit; follow and fetch results. Shared by REST and MCP."""

    def __init__(
        self,
        requests: UserRequests,
        storage: ObjectStorage,
        limits: ImageLimits,
        changes: RowChanges,
        *,
        owns_storage: bool = True,
        stream_seconds: float = STREAM_MAX_SECONDS,
        waits_per_user: int = WAITS_PER_USER,
    ) -> None:
        """``owns_storage=False`` when the storage adapter is shared (the service's): then it is
        opened and closed by its owner, not here."""
        self.requests = requests
        self._storage = storage
        self._limits = limits
        self._changes = changes
        self._owns_storage = owns_storage
        self._stream_seconds = stream_seconds
        self._waits_per_user = waits_per_user
        self._waits: Counter[uuid.UUID] = Counter()
        # Validation decodes untrusted images: its own small pool of decoding processes (each image
        # within its CPU time), so neither a flood of uploads nor slow decodes can take the threads
        # edits run in (the loop's default executor) or the processes the worker decodes in.
        self._validation = DecodePool(VALIDATION_THREADS)

    @property
    def limits(self) -> ImageLimits:
        return self._limits

    async def open(self) -> None:
        """Open the pool, the change listener and (when this owns it) the storage client."""
        await self.requests.open()
        if self._owns_storage:
            await self._storage.open()
        await self._changes.open()

    async def close(self) -> None:
        await self.requests.close()
        if self._owns_storage:
            await self._storage.close()
        await self._changes.close()
        self._validation.close()

    async def submit(
        self,
        user: User,
        images: Sequence[bytes],
        params: EditParams,
        *,
        webhook_endpoint_id: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        """Validate, upload the images and insert the row; with no image, a creation at ``params``' size.
        ``webhook_endpoint_id``: one of the user's completion-webhook endpoints (the schema checks whose)."""
        if not images and params.width is None and params.height is None:
            params = dataclasses.replace(params, width=CREATION_SIZE[0], height=CREATION_SIZE[1])
        check_request(params, len(images))  # the rules the schema and the engine hold, with their reasons
        formats = await self._validate(images)
        request_id = uuid.uuid4()
        paths = []
        for index, (data, (extension, media_type)) in enumerate(zip(images, formats, strict=True)):
            path = f"{user.id}/{request_id}/{index}.{extension}"
            await self._storage.upload(INPUT_BUCKET, path, data, content_type=media_type)
            paths.append(path)
        return await self.requests.insert(
            user, request_id, paths, params, webhook_endpoint_id=webhook_endpoint_id
        )

    async def submit_batch(
        self,
        user: User,
        images: Sequence[bytes],
        references: Sequence[bytes],
        params: EditParams,
        *,
        object_paths: Sequence[str] = (),
        reference_paths: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The same edit over many images: one request per image (uploaded ``images``, then
        ``object_paths`` already in the user's folder), each also given the references. Everything is
        checked before anything is stored; the batch's insert makes every request or none."""
        check_batch(params, len(images) + len(object_paths), len(references) + len(reference_paths))
        formats = await self._validate([*images, *references])
        batch_id = uuid.uuid4()
        uploaded = []
        for index, (data, (extension, media_type)) in enumerate(
            zip([*images, *references], formats, strict=True)
        ):
            name = str(index) if index < len(images) else f"ref{index - len(images)}"
            path = f"{user.id}/{batch_id}/{name}.{extension}"
            await self._storage.upload(INPUT_BUCKET, path, data, content_type=media_type)
            uploaded.append(path)
        paths = [*uploaded[: len(images)], *object_paths]
        refs = [*uploaded[len(images) :], *reference_paths]
        return await self.requests.insert_batch(user, batch_id, paths, refs, params)

    async def _validate(self, images: Sequence[bytes]) -> list[tuple[str, str]]:
        """Each image decoded (in a decoding process, one after the other); their formats."""
        for data in images:
            await self._validation.check(data, self._limits)  # raises InvalidInput with the reason
        return [_FORMATS[_sniff_format(data)] for data in images]

    async def wait(self, user: User, request_id: uuid.UUID, timeout: float) -> dict[str, Any] | None:
        """The row once it is finished, or as it stands when ``timeout`` (at most ``WAIT_MAX_SECONDS``)
        runs out; None when it is not theirs."""
        last: dict[str, Any] | None = None
        async for row in self.follow(user, request_id, seconds=min(timeout, WAIT_MAX_SECONDS)):
            last = row
        return last

    async def follow(
        self, user: User, request_id: uuid.UUID, *, seconds: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the row each time its status or progress changes, until it is finished or the
        stream's lifetime (``seconds``, at most the configured one) is over. Driven by change
        notifications: an idle row costs a re-read only every ``CHANGES_FALLBACK_SECONDS``."""
        lifetime = self._stream_seconds if seconds is None else min(seconds, self._stream_seconds)
        deadline = time.monotonic() + lifetime
        async with self._held_by(user), self._changes.watch(request_id) as watch:
            last: tuple[Any, Any] | None = None
            while True:
                row = await self.requests.get(user, request_id)
                if row is None:
                    return
                state = (row["status"], row["progress"])
                if state != last:
                    last = state
                    yield row
                left = deadline - time.monotonic()
                if row["status"] in TERMINAL or left <= 0:
                    return
                await watch.wait(min(left, CHANGES_FALLBACK_SECONDS))

    def ensure_can_wait(self, user: User) -> None:
        """``LimitExceeded`` when ``user`` already holds as many waits and streams as allowed (ways in
        call it before answering, so the refusal is a status code, not a stream cut short)."""
        if self._waits[user.id] >= self._waits_per_user:
            raise LimitExceeded(
                f"{self._waits_per_user} waits or event streams are already open for this user",
                reason=ReasonCode.TOO_MANY_WAITS,
            )

    @asynccontextmanager
    async def _held_by(self, user: User) -> AsyncIterator[None]:
        """Count one open wait or stream against ``user``; refuse past the per-user bound."""
        self.ensure_can_wait(user)
        self._waits[user.id] += 1
        try:
            yield
        finally:
            self._waits[user.id] -= 1
            if not self._waits[user.id]:
                del self._waits[user.id]

    async def output(self, row: dict[str, Any]) -> bytes:
        return await self._storage.download(
            row["output_bucket"], row["output_path"], max_bytes=MAX_OUTPUT_BYTES
        )

    async def output_url(self, row: dict[str, Any], expires_in: int) -> str | None:
        if row["status"] != "succeeded" or not row["output_path"] or row.get("output_expired_at"):
            return None  # an expired output was deleted by retention: nothing to sign
        return await self._storage.signed_url(row["output_bucket"], row["output_path"], expires_in=expires_in)


def _sniff_format(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    return "WEBP"
