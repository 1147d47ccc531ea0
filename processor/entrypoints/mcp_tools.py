"""MCP tools: the user's actions (``core.user_actions``) as tools, beside the same REST API.

``edit_image`` (submit, and wait up to ``timeout_seconds``), ``get_edit_status``, ``list_recent_edits``,
``cancel_edit``, ``wait_for_edit`` (progress notifications while it runs, then the request), and for
batches ``submit_batch``, ``get_batch`` and ``cancel_batch``. A refusal is a tool error that starts
with its reason code (``not_found: ...``, ``already_finished: ...``), as the REST API's ``error.code``.

Served over streamable HTTP at ``/mcp`` inside the app (callers send their Supabase access
token as ``Authorization: Bearer``), or over stdio with ``edit-processor mcp`` (the token comes
from ``MCP_ACCESS_TOKEN``). Either way the edits belong to that user and RLS holds.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.utilities.types import Image
from pydantic import Field, PlainValidator, ValidationError, WithJsonSchema

from processor.core.user_actions import Action, UserActions
from processor.domain.errors import ProcessorError
from processor.domain.params import decoded_images, encoded_images, options_from_mapping, params_from_mapping
from processor.domain.reasons import ReasonCode
from processor.domain.request import OPTION_FIELDS, PARAM_FIELDS, DeclaredField
from processor.domain.request_schema import field_schema
from processor.domain.rules import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, TERMINAL, WAIT_MAX_SECONDS
from processor.domain.users import User
from processor.entrypoints.auth import AuthError, TokenVerifier
from processor.observability.logs import keep_root_logging

ACTIONS: Mapping[Action, str] = {
    Action.SUBMIT: "edit_image",
    Action.SUBMIT_BATCH: "submit_batch",
    Action.GET: "get_edit_status",
    Action.LIST: "list_recent_edits",
    Action.CANCEL: "cancel_edit",
    Action.WAIT: "wait_for_edit",
    Action.FOLLOW: "wait_for_edit",  # each change is a progress notification
    Action.GET_BATCH: "get_batch",
    Action.CANCEL_BATCH: "cancel_batch",
}
"""The tool that serves each of the user's actions."""

T = TypeVar("T")

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
    "cost",
    "preview_step",
    "idempotency_key",
)
_URL_KEYS = ("output_url", "preview_url")
"""Signed URLs, where the action signed them (get, wait, list)."""


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
    view.update({key: row[key] for key in _URL_KEYS if key in row})
    return json.loads(json.dumps(view, default=str))  # type: ignore[no-any-return]


F = TypeVar("F", bound=Callable[..., Any])


def with_declared_fields(*declared: Sequence[DeclaredField]) -> Callable[[F], F]:
    """Give a tool written as ``tool(ctx, *, ..., **fields)`` the request's declared fields as its
    parameters, each documented by its declared schema (``request_schema.field_schema``).

    The MCP server validates arguments against the signature's types before the tool runs; these
    accept any value (texts stay texts: a JSON-looking prompt is not parsed), so the request is read
    and refused by ``params_from_mapping`` and the rules, with their reason codes, as every way in.
    """

    def add(tool: F) -> F:
        signature = inspect.signature(tool, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [
            inspect.Parameter(
                item.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=_annotation(item),
                default=inspect.Parameter.empty if item.required else item.default,
            )
            for fields in declared
            for item in fields
        ]
        tool.__signature__ = signature.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
        return tool

    return add


def _annotation(item: DeclaredField) -> Any:
    schema = WithJsonSchema(field_schema(item, documented=False))
    described = Field(description=item.spec.description)
    if item.spec.kind in ("text", "choice"):
        # Annotated as str, so the server does not parse a text that looks like JSON; accepted as given.
        return Annotated[str, PlainValidator(_as_given), schema, described]
    return Annotated[Any, schema, described]


def _as_given(value: object) -> object:
    return value


async def answer(call: Awaitable[T]) -> T:
    """The core's answer, or its refusal as a tool error led by the reason code (``not_found: ...``)."""
    try:
        return await call
    except ProcessorError as exc:
        raise ToolError(str(exc)) from exc


def _id(text: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise ToolError(f"{ReasonCode.INVALID_REQUEST}: {name} is not a uuid") from exc


_DECLARED: Mapping[str, DeclaredField] = {item.name: item for item in (*PARAM_FIELDS, *OPTION_FIELDS)}


class _CodedServer(MCPServer):
    """The SDK's server, with every tool error led by a reason code as the tools' own are: arguments
    that fail a tool's schema (a required one missing, a number that is text) are the field's reason
    (``invalid_prompt`` for a missing prompt, as REST's ``prompt is required``) or
    ``invalid_request``; an unknown tool is ``not_found``. (The SDK says pydantic's text.)"""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise  # a crash: the SDK logs it and tells the caller only the tool's name
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError):
                errors = cause.errors()
                loc = tuple(errors[0]["loc"]) if errors else ()
                field = _DECLARED.get(str(loc[0])) if loc else None
                code = field.spec.reason if field is not None else ReasonCode.INVALID_REQUEST
                where = ".".join(str(part) for part in loc)
                message = f"{where}: {errors[0]['msg'] if errors else 'invalid'}".strip(": ")
                raise ToolError(f"Error executing tool {name}: {code}: {message}") from cause
            if self._tool_manager.get_tool(name) is None:
                raise ToolError(f"{ReasonCode.NOT_FOUND}: no tool named {name!r}") from exc
            raise


def create_mcp_server(
    actions: UserActions,
    verifier: TokenVerifier,
    *,
    stdio_token: str | None = None,
    open_resources: bool = False,
) -> MCPServer:
    """The MCP server; mount ``streamable_http_app()`` in the app, or ``run("stdio")`` with
    ``open_resources=True`` so the server opens the database pool and storage client itself."""

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        await actions.open()
        try:
            yield
        finally:
            await actions.close()

    # The SDK's constructor puts a Rich handler on the root logger (logging.basicConfig): the
    # process keeps the one logging set-up it had (observability/logs.py).
    with keep_root_logging():
        mcp = _CodedServer(
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
    @with_declared_fields(PARAM_FIELDS, OPTION_FIELDS)
    async def edit_image(
        ctx: Context,
        *,
        image_base64: str | None = None,
        object_path: str | None = None,
        timeout_seconds: Annotated[float, Field(ge=0, le=WAIT_MAX_SECONDS)] = WAIT_MAX_SECONDS,
        **fields: Any,
    ) -> list[Any]:
        """Edit an image (base64, or an object path in your `edit-inputs/{your id}/` folder) and return it.

        Without an image, creates one: the model edits a `blank` canvas (`base_color`) or seeded
        `noise` at `width` × `height` (multiples of 16; default 1024 × 1024). Waits for the result
        up to `timeout_seconds` (0: returns at once; follow with `wait_for_edit`); returns the image
        (in `output_format`: png, webp or jpeg) and its metadata. `speed`: `quality` (40 steps),
        `fast` (8) or `fastest` (4); `loras`: up to 3 allowlisted `{"name", "scale"}`;
        `webhook_endpoint_id`: one of your completion-webhook endpoints, told when the edit is final;
        `idempotency_key`: a retry with it gets the edit it made, never a second one.
        """
        user = user_of(ctx)

        async def submit_and_wait() -> list[Any]:
            # The tool's arguments go through the one mapping every way in shares.
            arguments = {**fields, "image": image_base64 or None}
            params, options, images = (
                params_from_mapping(arguments),
                options_from_mapping(arguments),
                encoded_images(arguments),
            )
            # One of the user's waits is held from before the upload: a refusal creates nothing.
            final = await actions.submit_and_wait(
                user,
                images,
                params,
                options,
                timeout=timeout_seconds,
                object_paths=[object_path] if object_path else [],
            )
            if final["status"] in TERMINAL and final["status"] != "succeeded":
                code = final["error_code"] or final["status"]
                raise ToolError(f"{code}: {final['error_message'] or final['status']}")
            if final["status"] != "succeeded":
                return [json.dumps({**_view(final), "note": "still running; call wait_for_edit"})]
            output = await actions.output(final)
            return [Image(data=output.data, format=output.format), json.dumps(_view(final))]

        return await answer(submit_and_wait())

    @mcp.tool()
    async def get_edit_status(edit_id: str, ctx: Context) -> dict[str, Any]:
        """Status, progress, result metadata and signed URLs of one of your edits: `output_url` once it
        succeeded, `preview_url` (a live preview at `preview_step`) while it runs."""
        return _view(await answer(actions.get(user_of(ctx), _id(edit_id, "edit_id"))))

    @mcp.tool(
        description=f"Your most recent edits, newest first (`limit`: 1 to {MAX_LIST_LIMIT}), with their "
        "signed URLs."
    )
    async def list_recent_edits(ctx: Context, limit: int = DEFAULT_LIST_LIMIT) -> list[dict[str, Any]]:
        return [_view(row) for row in await answer(actions.recent(user_of(ctx), limit))]

    @mcp.tool()
    async def cancel_edit(edit_id: str, ctx: Context) -> dict[str, Any]:
        """Cancel one of your edits that is waiting or running (a running edit stops between steps)."""
        return _view(await answer(actions.cancel(user_of(ctx), _id(edit_id, "edit_id"))))

    @mcp.tool()
    async def wait_for_edit(
        edit_id: str,
        ctx: Context,
        timeout_seconds: Annotated[float, Field(ge=0, le=WAIT_MAX_SECONDS)] = WAIT_MAX_SECONDS,
    ) -> dict[str, Any]:
        """Wait until one of your edits is finished (up to `timeout_seconds`), sending its progress as
        progress notifications (the message names the live preview's step, when there is one);
        returns it as `get_edit_status` does."""
        user = user_of(ctx)

        async def follow() -> dict[str, Any]:
            rows = await actions.follow(user, _id(edit_id, "edit_id"), seconds=timeout_seconds)
            async for row in rows:
                step = row.get("preview_step")
                message = row["status"] if step is None else f"{row['status']} (preview at step {step})"
                await ctx.report_progress(float(row["progress"]), 1.0, message)
            return _view(await actions.get(user, _id(edit_id, "edit_id")))

        return await answer(follow())

    _add_batch_tools(mcp, actions, user_of)
    return mcp


def _add_batch_tools(mcp: MCPServer, actions: UserActions, user_of: Callable[[Context], User]) -> None:
    @mcp.tool()
    @with_declared_fields(PARAM_FIELDS)
    async def submit_batch(
        ctx: Context,
        *,
        images_base64: list[str] | None = None,
        object_paths: list[str] | None = None,
        reference_images_base64: list[str] | None = None,
        reference_paths: list[str] | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """The same edit over many images: one edit per image (base64, or object paths in your
        `edit-inputs/{your id}/` folder), each also given the reference images, at most
        `MAX_BATCH_SIZE` (50) in all. All are created or none. Returns at once; follow with `get_batch`.
        `idempotency_key`: a retry with it gets the batch it made, never a second one."""
        user = user_of(ctx)

        async def submit() -> dict[str, Any]:
            # The counts are checked (by submit_batch) before any image is stored; decoding base64
            # first costs no more than the arguments already did.
            batch = await actions.submit_batch(
                user,
                decoded_images(images_base64),
                decoded_images(reference_images_base64),
                params_from_mapping(fields),
                object_paths=object_paths or [],
                reference_paths=reference_paths or [],
                idempotency_key=options_from_mapping({"idempotency_key": idempotency_key}).idempotency_key,
            )
            return _batch_view(batch)

        return await answer(submit())

    @mcp.tool()
    async def get_batch(batch_id: str, ctx: Context) -> dict[str, Any]:
        """Counts by status, progress (finished edits count 1) and every edit of one of your batches."""
        return _batch_view(await answer(actions.get_batch(user_of(ctx), _id(batch_id, "batch_id"))))

    @mcp.tool()
    async def cancel_batch(batch_id: str, ctx: Context) -> dict[str, Any]:
        """Cancel every edit of one of your batches that has not finished; returns the batch and `canceled_now`."""
        batch = await answer(actions.cancel_batch(user_of(ctx), _id(batch_id, "batch_id")))
        return {**_batch_view(batch), "canceled_now": batch["canceled_now"]}
