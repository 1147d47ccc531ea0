"""Submitting and following edit requests on behalf of a user: the core of the REST API and MCP tools.

Rows are written and read through the ``UserRequests`` port, which acts *as the user*
(the Postgres adapter sets the role and JWT claims as PostgREST would), so the schema's
RLS policies and column grants decide what a caller may do; this module adds no access
rules of its own. Input images are validated before anything is stored, then uploaded under the user's
folder in ``edit-inputs``; the row's insert trigger sees them and queues the request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from processor.domain.images import ImageLimits, decode_image
from processor.domain.params import check_request
from processor.domain.ports import EditParams, ObjectStorage, UserRequests
from processor.domain.rules import CREATION_SIZE, INPUT_BUCKET, MAX_OUTPUT_BYTES, TERMINAL
from processor.domain.users import User

_FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "WEBP": ("webp", "image/webp")}


class Submissions:
    """Validate, store and submit; follow and fetch results. Shared by REST and MCP."""

    def __init__(self, requests: UserRequests, storage: ObjectStorage, limits: ImageLimits) -> None:
        self.requests = requests
        self._storage = storage
        self._limits = limits

    async def open(self) -> None:
        """Open the pool and the storage client (when nobody else owns them, e.g. MCP over stdio)."""
        await self.requests.open()
        await self._storage.open()

    async def close(self) -> None:
        await self.requests.close()
        await self._storage.close()

    async def submit(self, user: User, images: Sequence[bytes], params: EditParams) -> dict[str, Any]:
        """Validate, upload the images and insert the row; with no image, a creation at ``params``' size."""
        if not images and params.width is None and params.height is None:
            params = dataclasses.replace(params, width=CREATION_SIZE[0], height=CREATION_SIZE[1])
        check_request(params, len(images))  # the rules the schema and the engine hold, with their reasons
        formats = await asyncio.to_thread(self._validate, images)
        request_id = uuid.uuid4()
        paths = []
        for index, (data, (extension, media_type)) in enumerate(zip(images, formats, strict=True)):
            path = f"{user.id}/{request_id}/{index}.{extension}"
            await self._storage.upload(INPUT_BUCKET, path, data, content_type=media_type)
            paths.append(path)
        return await self.requests.insert(user, request_id, paths, params)

    def _validate(self, images: Sequence[bytes]) -> list[tuple[str, str]]:
        formats = []
        for data in images:
            decoded = decode_image(data, self._limits)  # raises InvalidInput with the reason
            del decoded
            formats.append(_FORMATS[_sniff_format(data)])
        return formats

    async def wait(
        self, user: User, request_id: uuid.UUID, timeout: float, poll: float = 0.1
    ) -> dict[str, Any] | None:
        """The row once it is finished, or as it stands when ``timeout`` runs out (None: not theirs)."""
        deadline = time.monotonic() + timeout
        while True:
            row = await self.requests.get(user, request_id)
            if row is None or row["status"] in TERMINAL or time.monotonic() >= deadline:
                return row
            await asyncio.sleep(poll)

    async def follow(
        self, user: User, request_id: uuid.UUID, poll: float = 0.25
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the row each time its status or progress changes, until it is finished."""
        last: tuple[Any, Any] | None = None
        while True:
            row = await self.requests.get(user, request_id)
            if row is None:
                return
            state = (row["status"], row["progress"])
            if state != last:
                last = state
                yield row
            if row["status"] in TERMINAL:
                return
            await asyncio.sleep(poll)

    async def output(self, row: dict[str, Any]) -> bytes:
        return await self._storage.download(
            row["output_bucket"], row["output_path"], max_bytes=MAX_OUTPUT_BYTES
        )

    async def output_url(self, row: dict[str, Any], expires_in: int) -> str | None:
        if row["status"] != "succeeded" or not row["output_path"]:
            return None
        return await self._storage.signed_url(row["output_bucket"], row["output_path"], expires_in=expires_in)


def _sniff_format(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    return "WEBP"
