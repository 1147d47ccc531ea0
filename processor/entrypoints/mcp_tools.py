"""MCP tools over the same submissions as the REST API: ``edit_image``, ``get_edit_status``,
``list_recent_edits``, and for batches ``submit_batch``, ``get_batch`` and ``cancel_batch``.

Served over streamable HTTP at ``/mcp`` inside the app (callers send their Supabase access
token as ``Authorization: Bearer``), or over stdio with ``edit-processor mcp`` (the token comes
from ``MCP_ACCESS_TOKEN``). Either way the edits belong to that user and RLS holds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from pydantic import Field

from processor.core.submissions import Submissions
from processor.domain import rules
from processor.domain.errors import ProcessorError
from processor.domain.params import (
    check_batch,
    check_request,
    decoded_images,
    encoded_images,
    options_from_mapping,
    params_from_mapping,
)
from processor.domain.reasons import ReasonCode
from processor.domain.rules import TERMINAL, WAIT_MAX_SECONDS
from processor.domain.users import User
from processor.entrypoints.auth import AuthError, TokenVerifier

_VIEW_KEYS = (
    "id",
    "status",
    "progress",
    "prompt",
    "error",
    "error_code",
    "result",
    "width",
    "height",
    "created_at",
    "finished_at",
    "inputs_expired_at",
    "output_expired_at",
)


_BATCH_KEYS = (
    "id",
    "prompt",
    "requests",
    "awaiting_image",
    "queued",
    "processing",
    "succeeded",
    "failed",
    "canceled",
    "finished",
    "progress",
    "created_at",
    "last_finished_at",
)


def _batch_view(batch: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(json.dumps({key: batch[key] for key in _BATCH_KEYS}, default=str))
    view["items"] = [_view(row) for row in batch["items"]]
    return view


def _view(row: dict[str, Any]) -> dict[str, Any]:
    # `error` is the message written for users (the row's raw `error` is not theirs to read).
    view = {key: row["error_message"] if key == "error" else row[key] for key in _VIEW_KEYS}
    return json.loads(json.dumps(view, default=str))  # type: ignore[no-any-return]


async def _submit(
    submissions: Submissions, user: User, arguments: dict[str, Any], object_path: str | None
) -> dict[str, Any]:
    # The tool's arguments go through the one mapping every way in shares.
    params = params_from_mapping(arguments)
    images = encoded_images(arguments)
    options = options_from_mapping(arguments)
    if object_path and not images:
        check_request(params, 1)
        # RLS refuses paths outside the caller's own folder.
        return await submissions.requests.insert(user, uuid.uuid4(), [object_path], params, options)
    # No image: create from a base canvas.
    return await submissions.submit(user, images, params, options)


def create_mcp_server(
    submissions: Submissions,
    verifier: TokenVerifier,
    *,
    stdio_token: str | None = None,
    signed_url_seconds: int = 3600,
    open_resources: bool = False,
) -> MCPServer:
    """The MCP server; mount ``streamable_http_app()`` in the app, or ``run("stdio")`` with
    ``open_resources=True`` so the server opens the database pool and storage client itself."""

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        await submissions.open()
        try:
            yield
        finally:
            await submissions.close()

    mcp = MCPServer(
        lifespan=lifespan if open_resources else None,
        name="qwen-edit-processor",
        instructions="Edit images with Qwen-Image-Edit-2509. Edits run on a GPU queue and take seconds to minutes.",
    )

    def user_of(ctx: Context) -> User:
        headers = ctx.headers
        authorization = headers.get("authorization") if headers else None
        if authorization is None and stdio_token:
            authorization = f"Bearer {stdio_token}"
        try:
            return verifier.verify(authorization)
        except AuthError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(structured_output=False)
    async def edit_image(
        prompt: str,
        ctx: Context,
        image_base64: str | None = None,
        object_path: str | None = None,
        negative_prompt: str = rules.DEFAULT_NEGATIVE_PROMPT,
        num_inference_steps: int = rules.DEFAULT_STEPS,
        true_cfg_scale: float = rules.DEFAULT_TRUE_CFG_SCALE,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        # A plain str, not a Literal: an unknown base is refused by the shared rules, with their reason code.
        base: str = rules.DEFAULT_BASE,
        base_color: str = rules.DEFAULT_BASE_COLOR,
        timeout_seconds: Annotated[float, Field(ge=0, le=WAIT_MAX_SECONDS)] = WAIT_MAX_SECONDS,
        speed: Literal["quality", "fast", "fastest"] | None = None,
        loras: list[dict[str, Any]] | None = None,
        webhook_endpoint_id: str | None = None,
    ) -> list[Any]:
        """Edit an image (base64, or an object path in your `edit-inputs/{your id}/` folder) and return it.

        Without an image, creates one: the model edits a `blank` canvas (`base_color`) or seeded
        `noise` at `width` × `height` (multiples of 16; default 1024 × 1024). Waits for the result
        up to `timeout_seconds`; returns the PNG and its metadata. `speed`: `quality` (40 steps),
        `fast` (8) or `fastest` (4); `loras`: up to 3 allowlisted `{"name", "scale"}`;
        `webhook_endpoint_id`: one of your completion-webhook endpoints, told when the edit is final.
        """
        user = user_of(ctx)
        arguments = {
            "prompt": prompt,
            "image": image_base64 or None,
            "negative_prompt": negative_prompt,
            "num_inference_steps": num_inference_steps,
            "true_cfg_scale": true_cfg_scale,
            "seed": seed,
            "width": width,
            "height": height,
            "base": base,
            "base_color": base_color,
            "speed": speed,
            "loras": loras,
            "webhook_endpoint_id": webhook_endpoint_id,
        }
        try:
            submissions.ensure_can_wait(user)  # refused before anything is stored
            row = await _submit(submissions, user, arguments, object_path)
            final = await submissions.wait(user, row["id"], timeout_seconds) or row
            if final["status"] != "succeeded":
                if final["status"] in TERMINAL:
                    raise ToolError(
                        f"{final['error_code'] or final['status']}: {final['error_message'] or final['status']}"
                    )
                return [json.dumps({**_view(final), "note": "still running; call get_edit_status"})]
            png = await submissions.output(final)
        except ProcessorError as exc:
            raise ToolError(str(exc)) from exc
        return [Image(data=png, format="png"), json.dumps(_view(final))]

    @mcp.tool()
    async def get_edit_status(edit_id: str, ctx: Context) -> dict[str, Any]:
        """Status, progress, result metadata and a signed URL of the output of one of your edits."""
        user = user_of(ctx)
        try:
            row = await submissions.requests.get(user, uuid.UUID(edit_id))
        except ValueError as exc:
            raise ToolError(f"{ReasonCode.INVALID_REQUEST}: edit_id is not a uuid") from exc
        if row is None:
            raise ToolError(f"{ReasonCode.NOT_FOUND}: no such edit request")
        return {**_view(row), "output_url": await submissions.output_url(row, signed_url_seconds)}

    @mcp.tool()
    async def list_recent_edits(ctx: Context, limit: int = 10) -> list[dict[str, Any]]:
        """Your most recent edits, newest first."""
        user = user_of(ctx)
        return [_view(row) for row in await submissions.requests.recent(user, max(1, min(limit, 100)))]

    _add_batch_tools(mcp, submissions, user_of)
    return mcp


def _add_batch_tools(mcp: MCPServer, submissions: Submissions, user_of: Callable[[Context], User]) -> None:
    @mcp.tool()
    async def submit_batch(
        prompt: str,
        ctx: Context,
        images_base64: list[str] | None = None,
        object_paths: list[str] | None = None,
        reference_images_base64: list[str] | None = None,
        reference_paths: list[str] | None = None,
        negative_prompt: str = rules.DEFAULT_NEGATIVE_PROMPT,
        num_inference_steps: int = rules.DEFAULT_STEPS,
        true_cfg_scale: float = rules.DEFAULT_TRUE_CFG_SCALE,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        speed: Literal["quality", "fast", "fastest"] | None = None,
        loras: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The same edit over many images: one edit per image (base64, or object paths in your
        `edit-inputs/{your id}/` folder), each also given the reference images, at most
        `MAX_BATCH_SIZE` (50) in all. All are created or none. Returns at once; follow with `get_batch`."""
        user = user_of(ctx)
        arguments = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "num_inference_steps": num_inference_steps,
            "true_cfg_scale": true_cfg_scale,
            "seed": seed,
            "width": width,
            "height": height,
            "speed": speed,
            "loras": loras,
        }
        try:
            params = params_from_mapping(arguments)
            paths, refs = object_paths or [], reference_paths or []
            # Counted before any image is decoded, with the same rules as every way in.
            check_batch(
                params,
                len(images_base64 or []) + len(paths),
                len(reference_images_base64 or []) + len(refs),
            )
            batch = await submissions.submit_batch(
                user,
                decoded_images(images_base64),
                decoded_images(reference_images_base64),
                params,
                object_paths=paths,
                reference_paths=refs,
            )
        except ProcessorError as exc:
            raise ToolError(str(exc)) from exc
        return _batch_view(batch)

    @mcp.tool()
    async def get_batch(batch_id: str, ctx: Context) -> dict[str, Any]:
        """Counts by status, progress (finished edits count 1) and every edit of one of your batches."""
        user = user_of(ctx)
        batch = await submissions.requests.get_batch(user, _batch_id(batch_id))
        if batch is None:
            raise ToolError(f"{ReasonCode.NOT_FOUND}: no such batch")
        return _batch_view(batch)

    @mcp.tool()
    async def cancel_batch(batch_id: str, ctx: Context) -> dict[str, Any]:
        """Cancel every edit of one of your batches that has not finished; returns the batch and `canceled_now`."""
        user = user_of(ctx)
        batch_uuid = _batch_id(batch_id)
        if await submissions.requests.get_batch(user, batch_uuid) is None:
            raise ToolError(f"{ReasonCode.NOT_FOUND}: no such batch")
        canceled = await submissions.requests.cancel_batch(user, batch_uuid)
        batch = await submissions.requests.get_batch(user, batch_uuid)
        assert batch is not None
        return {**_batch_view(batch), "canceled_now": canceled}


def _batch_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise ToolError(f"{ReasonCode.INVALID_REQUEST}: batch_id is not a uuid") from exc
