"""Submitting and following edit requests on behalf of a user: the core of the REST API and MCP tools.

Rows are written and read *as the user* (``set local role authenticated`` plus
``request.jwt.claims``), exactly as PostgREST would, so the schema's RLS policies and
column grants decide what a caller may do; this module adds no access rules of its own.
Input images are validated before anything is stored, then uploaded under the user's
folder in ``edit-inputs``; the row's insert trigger sees them and queues the request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from processor.auth import User
from processor.errors import InvalidInput, TransientError
from processor.images import ImageLimits, decode_image, parse_hex_colour
from processor.ports import BaseCanvas, ObjectStorage
from processor.sizing import ModelSizing, output_size

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
INPUT_BUCKET = "edit-inputs"
_FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "WEBP": ("webp", "image/webp")}
_VIEW_COLUMNS = (
    "id, status, progress, prompt, negative_prompt, num_inference_steps, true_cfg_scale, guidance_scale, seed, "
    "input_paths, output_bucket, output_path, error, error_code, result, attempts, created_at, started_at, "
    "finished_at, updated_at, width, height, base, base_color"
)
CREATION_SIZE = (1024, 1024)
"""Size of a creation (no input image) that names none: Qwen-Image-Edit-2509's native square."""


@dataclass(frozen=True, slots=True)
class EditSpec:
    """What a caller asks for (the model card's defaults)."""

    prompt: str
    negative_prompt: str = " "
    num_inference_steps: int = 40
    true_cfg_scale: float = 4.0
    guidance_scale: float = 1.0
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    base: BaseCanvas = "blank"
    base_color: str = "#ffffff"


class EditRequests:
    """``edit_requests`` as one user sees it, through a pooled direct connection."""

    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = AsyncConnectionPool(
            dsn,
            connection_class=psycopg.AsyncConnection[DictRow],
            min_size=1,
            max_size=max_size,
            kwargs={"row_factory": dict_row},
            open=False,
            check=AsyncConnectionPool.check_connection,
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _as_user(self, user: User) -> AsyncIterator[psycopg.AsyncConnection[DictRow]]:
        try:
            async with self._pool.connection(timeout=10.0) as conn, conn.transaction():
                claims = {**user.claims, "sub": str(user.id), "role": "authenticated"}
                await conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
                await conn.execute("set local role authenticated")
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as exc:
            raise TransientError(f"database unavailable: {exc}", reason="database_unavailable") from exc

    async def insert(
        self, user: User, request_id: uuid.UUID, paths: Sequence[str], spec: EditSpec
    ) -> dict[str, Any]:
        try:
            async with self._as_user(user) as conn:
                cursor = await conn.execute(
                    "insert into public.edit_requests (id, prompt, negative_prompt, input_paths, "
                    "num_inference_steps, true_cfg_scale, guidance_scale, seed, width, height, base, "
                    "base_color) "
                    f"values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning {_VIEW_COLUMNS}",
                    (
                        request_id,
                        spec.prompt,
                        spec.negative_prompt,
                        list(paths),
                        spec.num_inference_steps,
                        spec.true_cfg_scale,
                        spec.guidance_scale,
                        spec.seed,
                        spec.width,
                        spec.height,
                        spec.base,
                        spec.base_color,
                    ),
                )
                row = await cursor.fetchone()
        except psycopg.errors.CheckViolation as exc:
            reason = (
                "invalid_size"
                if exc.diag.constraint_name == "edit_requests_size_valid"
                else "invalid_parameter"
            )
            raise InvalidInput(
                f"request refused by the schema: {exc.diag.constraint_name}", reason=reason
            ) from exc
        except psycopg.errors.DataError as exc:
            # A value the column type cannot hold (1e-300 is a valid float, but underflows ``real``).
            raise InvalidInput(
                f"a parameter cannot be stored: {exc.diag.message_primary}", reason="invalid_parameter"
            ) from exc
        assert row is not None
        return row

    async def get(self, user: User, request_id: uuid.UUID) -> dict[str, Any] | None:
        async with self._as_user(user) as conn:
            cursor = await conn.execute(
                f"select {_VIEW_COLUMNS} from public.edit_requests where id = %s", (request_id,)
            )
            return await cursor.fetchone()

    async def recent(self, user: User, limit: int = 20) -> list[dict[str, Any]]:
        async with self._as_user(user) as conn:
            cursor = await conn.execute(
                f"select {_VIEW_COLUMNS} from public.edit_requests order by created_at desc limit %s",
                (limit,),
            )
            return await cursor.fetchall()

    async def cancel(self, user: User, request_id: uuid.UUID) -> bool:
        async with self._as_user(user) as conn:
            cursor = await conn.execute("select public.cancel_edit_request(%s) as ok", (request_id,))
            row = await cursor.fetchone()
        return bool(row and row["ok"])


class Submissions:
    """Validate, store and submit; follow and fetch results. Shared by REST and MCP."""

    def __init__(self, requests: EditRequests, storage: ObjectStorage, limits: ImageLimits) -> None:
        self.requests = requests
        self._storage = storage
        self._limits = limits

    async def open(self) -> None:
        """Open the pool and the storage client (when nobody else owns them, e.g. MCP over stdio)."""
        await self.requests.open()
        opener = getattr(self._storage, "open", None)
        if opener is not None:
            await opener()

    async def close(self) -> None:
        await self.requests.close()
        closer = getattr(self._storage, "close", None)
        if closer is not None:
            await closer()

    async def submit(self, user: User, images: Sequence[bytes], spec: EditSpec) -> dict[str, Any]:
        """Validate, upload the images and insert the row; with no image, a creation at ``spec``'s size."""
        if not images and spec.width is None and spec.height is None:
            spec = dataclasses.replace(spec, width=CREATION_SIZE[0], height=CREATION_SIZE[1])
        if spec.width is not None or spec.height is not None:
            output_size([], ModelSizing(), spec.width, spec.height)  # the schema's rule, with a reason
        if spec.base not in ("blank", "noise"):
            raise InvalidInput(
                f"base must be 'blank' or 'noise', got {spec.base!r}", reason="invalid_parameter"
            )
        parse_hex_colour(spec.base_color)
        if len(images) > 3:
            raise InvalidInput(
                f"{len(images)} images given; Qwen-Image-Edit-2509 takes 1 to 3", reason="too_many_images"
            )
        if not 1 <= len(spec.prompt) <= 2000:
            raise InvalidInput("the prompt must have 1 to 2,000 characters", reason="invalid_prompt")
        if "\x00" in spec.prompt or "\x00" in spec.negative_prompt:
            raise InvalidInput("prompts may not contain NUL characters", reason="invalid_prompt")
        formats = await asyncio.to_thread(self._validate, images)
        request_id = uuid.uuid4()
        paths = []
        for index, (data, (extension, media_type)) in enumerate(zip(images, formats, strict=True)):
            path = f"{user.id}/{request_id}/{index}.{extension}"
            await self._storage.upload(INPUT_BUCKET, path, data, content_type=media_type)
            paths.append(path)
        return await self.requests.insert(user, request_id, paths, spec)

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
            row["output_bucket"], row["output_path"], max_bytes=256 * 1024 * 1024
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
