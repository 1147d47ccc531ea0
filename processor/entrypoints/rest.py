"""REST API for apps that would rather not talk to Supabase directly: ``/v1/edits`` and ``/v1/batches``.

A thin translation of the user's actions (``core.user_actions``): callers authenticate with their
Supabase access token, rows belong to them and RLS holds. Every error has one JSON shape
(``errors``): the core's ``NotFound`` is 404, ``AlreadyFinished`` 409, ``InvalidInput`` 422,
``LimitExceeded`` 429 (with ``Retry-After``), ``TransientError`` 503.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response, Security, status
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from processor.core.user_actions import Action, UserActions
from processor.domain.errors import InvalidInput
from processor.domain.params import (
    check_batch,
    check_image_count,
    decoded_images,
    encoded_images,
    options_from_mapping,
    params_from_mapping,
)
from processor.domain.reasons import ReasonCode
from processor.domain.request import EditParams, RequestOptions
from processor.domain.request_schema import object_schema, options_properties, params_properties
from processor.domain.rules import (
    DEFAULT_LIST_LIMIT,
    EDIT_BODY_FIELDS_BYTES,
    IDEMPOTENCY_KEY_MAX_CHARS,
    MAX_BATCH_SIZE,
    MAX_IMAGES,
    MAX_LIST_LIMIT,
    MULTIPART_MAX_FIELDS,
    SSE_KEEPALIVE_SECONDS,
    STATUSES,
    TERMINAL,
    WAIT_MAX_SECONDS,
    edit_body_bytes,
)
from processor.domain.users import User
from processor.entrypoints.auth import TokenVerifier
from processor.entrypoints.bodies import capped_request
from processor.entrypoints.errors import ApiError, ErrorResponse
from processor.entrypoints.stream_tokens import StreamTokens

_BEARER = HTTPBearer(
    bearerFormat="JWT",
    scheme_name="bearerAuth",
    description="The user's Supabase access token (`session.access_token`); never the anon or service key.",
    auto_error=False,
)
_STREAM_TOKEN = APIKeyQuery(
    name="token",
    scheme_name="streamToken",
    description="A stream token from `POST /v1/edits/{id}/stream-token`: opens that request's events only.",
    auto_error=False,
)
# Security dependencies: they document the schemes in the OpenAPI document ("Authorize" in /docs).
_BEARER_HEADER = Security(_BEARER)
_STREAM_TOKEN_QUERY = Security(_STREAM_TOKEN)


_COST = Field(
    default=None,
    description="What the request was charged against your max_cost_per_hour (docs/fair-sharing.md).",
)


class EditAccepted(BaseModel):
    id: uuid.UUID
    status: str
    status_url: str
    events_url: str
    cost: float | None = _COST


class StreamTokenView(BaseModel):
    """What opens one request's event stream from a browser (``EventSource`` sends no headers)."""

    token: str = Field(description="Pass it as `?token=`; it opens this request's stream only.")
    expires_at: datetime = Field(description="Open the stream before then; ask again for a new one.")
    events_url: str = Field(description="The stream's URL with the token: `new EventSource(events_url)`.")


class EditView(BaseModel):
    """A request as its owner sees it."""

    id: uuid.UUID
    status: str
    progress: float
    prompt: str
    error: str | None = Field(default=None, description="What `error_code` means, written for users.")
    error_code: str | None = None
    result: dict[str, Any] | None = None
    output_url: str | None = Field(default=None, description="Signed URL of the result, when succeeded.")
    preview_url: str | None = Field(
        default=None, description="Signed URL of the latest live preview while it runs (docs/previews.md)."
    )
    preview_step: int | None = Field(default=None, description="The denoising step the preview shows.")
    image: str | None = Field(
        default=None,
        description="The result, base64, in its format (`wait=true` only): see `image_media_type`.",
    )
    image_media_type: str | None = Field(
        default=None, description="`image/png`, `image/webp` or `image/jpeg`: the format of `image`."
    )
    width: int | None = None
    height: int | None = None
    base: str = "blank"
    input_paths: list[str] = Field(default_factory=list, description="Its input objects in `edit-inputs`.")
    batch_id: uuid.UUID | None = Field(default=None, description="The batch that made it, if any.")
    idempotency_key: str | None = Field(default=None, description="The key it was submitted with, if any.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    inputs_expired_at: datetime | None = Field(
        default=None, description="When retention deleted the inputs (docs/retention.md)."
    )
    output_expired_at: datetime | None = Field(
        default=None, description="When retention deleted the result; `output_url` is null from then on."
    )
    cost: float | None = _COST


class BatchView(BaseModel):
    """A batch as its owner sees it: counts by status, and progress (finished requests count 1)."""

    id: uuid.UUID
    prompt: str
    requests: int
    awaiting_image: int
    queued: int
    processing: int
    succeeded: int
    failed: int
    canceled: int
    finished: int
    progress: float
    created_at: datetime
    last_finished_at: datetime | None = None
    items: list[EditView] = Field(
        default_factory=list, description="Its requests, in the order of its images."
    )
    canceled_now: int | None = Field(default=None, description="DELETE only: how many this call canceled.")


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed request",
        401: "Missing, invalid or expired user token",
        404: "No such request for this user",
        409: "The request has already finished",
        413: "The body is larger than three images at the byte limit need",
        422: "Invalid input (reason code in error.code)",
        429: "Over a limit: waits or streams open, submissions in flight, the user's quota (error.code)",
        503: "Database or Storage unavailable; retry",
    }.items()
}

_BASE64_IMAGE = {
    "type": "string",
    "description": "Base64 image (PNG, JPEG or WebP); a data:image/...;base64, URL too.",
}
_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}


def _body(json_schema: dict[str, Any], form_schema: dict[str, Any]) -> dict[str, Any]:
    # Inlined, not in components: no route takes the body as a parameter (the bodies are read by
    # the one mapping), so FastAPI would not put a model there, and a $ref would point nowhere.
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema},
            },
        }
    }


# The documented bodies are built from the request's declaration (domain/request.py), the same one
# params_from_mapping and check_request read: what is documented is what is validated.
_CREATE_BODY = _body(
    object_schema(
        {
            **params_properties(),
            "image": {
                "anyOf": [_BASE64_IMAGE, {"type": "null"}],
                "description": _BASE64_IMAGE["description"],
            },
            "images": {
                "anyOf": [
                    {"type": "array", "items": _BASE64_IMAGE, "maxItems": MAX_IMAGES},
                    {"type": "null"},
                ],
                "description": f"Base64 images; with `image`, at most {MAX_IMAGES} in all. Give none to "
                "create an image from a base canvas (`base`) at `width` × `height` (default 1024 × 1024).",
            },
            **options_properties(),
        },
        description="A new edit, with the original RunPod service's field names.",
    ),
    object_schema(
        {
            **params_properties(form=True),
            "image": {**_FILES, "maxItems": MAX_IMAGES, "description": "The images (files or base64 text)."},
            **options_properties(form=True),
        }
    ),
)
_BATCH_BODY = _body(
    object_schema(
        {
            **params_properties(),
            "images": {"type": "array", "items": _BASE64_IMAGE, "maxItems": MAX_BATCH_SIZE},
            "object_paths": {
                "type": "array",
                "items": {"type": "string"},
                "maxItems": MAX_BATCH_SIZE,
                "description": "Objects in your edit-inputs folder.",
            },
            "reference_images": {
                "type": "array",
                "items": _BASE64_IMAGE,
                "maxItems": MAX_IMAGES - 1,
                "description": "Base64 images every request also gets.",
            },
            "reference_paths": {
                "type": "array",
                "items": {"type": "string"},
                "maxItems": MAX_IMAGES - 1,
                "description": "Objects every request also gets.",
            },
            "idempotency_key": options_properties()["idempotency_key"],
        },
        description="The same edit over many images: each of `images` and `object_paths` makes one "
        f"request, each given the references after its image; at most {MAX_BATCH_SIZE} images.",
    ),
    object_schema(
        {
            **params_properties(form=True),
            "image": {**_FILES, "maxItems": MAX_BATCH_SIZE, "description": "One request per image."},
            "reference": {
                **_FILES,
                "maxItems": MAX_IMAGES - 1,
                "description": "Images every request also gets.",
            },
            "idempotency_key": options_properties(form=True)["idempotency_key"],
        }
    ),
)


async def _capped(request: Request, max_body: int) -> Request:
    """The request with its body bounded by ``max_body`` (413 ``body_too_large`` past it, before reading on)."""
    try:
        return await capped_request(request, max_body)
    except HTTPException as exc:
        code = ReasonCode.BODY_TOO_LARGE if exc.status_code == 413 else ReasonCode.INVALID_REQUEST
        raise ApiError(exc.status_code, code, str(exc.detail)) from exc


async def _form(request: Request, *, max_files: int) -> FormData:
    """The form, with at most ``max_files`` files and the fields' bounds (400 ``invalid_multipart`` past them)."""
    try:
        return await request.form(
            max_files=max_files, max_fields=MULTIPART_MAX_FIELDS, max_part_size=EDIT_BODY_FIELDS_BYTES
        )
    except HTTPException as exc:  # Starlette's answer to a malformed (or over-long) multipart body
        raise ApiError(400, ReasonCode.INVALID_MULTIPART, str(exc.detail)) from exc


async def _json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object (400 ``invalid_json`` when it is not JSON, ``invalid_request`` when not an object)."""
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise ApiError(400, ReasonCode.INVALID_JSON, "the body is not valid JSON") from exc
    except UnicodeDecodeError as exc:
        raise ApiError(400, ReasonCode.INVALID_JSON, "the body is not UTF-8 JSON") from exc
    except ValueError as exc:  # an integer of more digits than int() converts (sys.int_info)
        raise ApiError(400, ReasonCode.INVALID_JSON, f"the body cannot be read: {exc}") from exc
    except RecursionError as exc:  # nesting deeper than the parser goes
        raise ApiError(400, ReasonCode.INVALID_JSON, "the body is nested too deeply") from exc
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", reason=ReasonCode.INVALID_REQUEST)
    return body


async def _read_create(request: Request, max_body: int) -> tuple[EditParams, list[bytes], RequestOptions]:
    """The body (at most ``max_body`` bytes: 413 past it, before reading on): its parameters, images
    and options."""
    content_type = request.headers.get("content-type", "")
    request = await _capped(request, max_body)
    if content_type.startswith("multipart/form-data"):
        # One file more than allowed, so that four images get the same ``too_many_images``
        # as through every other way in; the parser stops at the next one.
        form = await _form(request, max_files=MAX_IMAGES + 1)
        files = [item for key in _IMAGE_KEYS for item in form.getlist(key) if isinstance(item, UploadFile)]
        # Text parts named image/images are base64, as in a JSON body.
        texts = [item for key in _IMAGE_KEYS for item in form.getlist(key) if isinstance(item, str)]
        fields = {k: v for k, v in form.items() if isinstance(v, str) and k not in _IMAGE_KEYS}
        params = params_from_mapping(fields, form=True)
        options = options_from_mapping(fields, form=True)
        check_image_count(len(files) + len(texts))
        return params, [await item.read() for item in files] + encoded_images({"images": texts}), options
    body = await _json_object(request)
    return params_from_mapping(body), encoded_images(body), options_from_mapping(body)


_IMAGE_KEYS = ("image", "images")
_REFERENCE_KEYS = ("reference", "reference_images")
_BATCH_LISTS = ("images", "object_paths", "reference_images", "reference_paths")


def _text_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidInput(f"{key} must be a list of strings", reason=ReasonCode.INVALID_PARAMETER)
    return value


@dataclass(frozen=True, slots=True)
class _BatchBody:
    params: EditParams
    images: list[bytes]
    references: list[bytes]
    object_paths: list[str]
    reference_paths: list[str]
    idempotency_key: str | None = None


def _batch_key(fields: Mapping[str, Any], *, form: bool = False) -> str | None:
    """A batch's ``idempotency_key`` field, read and checked as the request option of that name."""
    return options_from_mapping({"idempotency_key": fields.get("idempotency_key")}, form=form).idempotency_key


def _keyed(key: str | None, header: str | None) -> str | None:
    """The idempotency key: the ``Idempotency-Key`` header's (a structured-field string, quoted or
    not) or the body's ``idempotency_key``; both given, they must agree."""
    if header is None:
        return key
    text = header.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = re.sub(r'\\(["\\])', r"\1", text[1:-1])
    checked = options_from_mapping({"idempotency_key": text}).idempotency_key
    if key is not None and key != checked:
        raise InvalidInput(
            "the Idempotency-Key header and the idempotency_key field differ",
            reason=ReasonCode.INVALID_REQUEST,
        )
    return checked


async def _read_batch(request: Request, max_body: int) -> _BatchBody:
    """A batch body, JSON or multipart (files ``image``, one request each, and ``reference``); the
    counts are checked before any image is decoded."""
    content_type = request.headers.get("content-type", "")
    request = await _capped(request, max_body)
    # A form without files (clients send those urlencoded) is read as a form too: an empty batch.
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        # One file more than allowed, so that an over-long batch gets ``too_many_images``.
        form = await _form(request, max_files=MAX_BATCH_SIZE + MAX_IMAGES)
        names = (*_IMAGE_KEYS, *_REFERENCE_KEYS)
        fields = {k: v for k, v in form.items() if isinstance(v, str) and k not in names}
        params = params_from_mapping(fields, form=True)
        files = [item for key in _IMAGE_KEYS for item in form.getlist(key) if isinstance(item, UploadFile)]
        refs = [item for key in _REFERENCE_KEYS for item in form.getlist(key) if isinstance(item, UploadFile)]
        check_batch(params, len(files), len(refs))
        return _BatchBody(
            params,
            [await item.read() for item in files],
            [await item.read() for item in refs],
            [],
            [],
            _batch_key(fields, form=True),
        )
    body = await _json_object(request)
    params = params_from_mapping(body)
    images, paths, references, reference_paths = (_text_list(body, key) for key in _BATCH_LISTS)
    check_batch(params, len(images) + len(paths), len(references) + len(reference_paths))
    return _BatchBody(
        params,
        decoded_images(images),
        decoded_images(references),
        paths,
        reference_paths,
        _batch_key(body),
    )


def _view(row: dict[str, Any], **extra: Any) -> EditView:
    # `error` is the message written for users (the raw text is the operators', in the row's `error`).
    return EditView.model_validate({**row, "error": row.get("error_message"), **extra})


def _batch_view(batch: dict[str, Any], **extra: Any) -> BatchView:
    return BatchView.model_validate({**batch, "items": [_view(row) for row in batch["items"]], **extra})


IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="A key of yours (visible ASCII, at most "
        f"{IDEMPOTENCY_KEY_MAX_CHARS} characters; a UUID, say) that makes a retry safe: the request it "
        "made before is answered again (`Idempotent-Replayed: true`), never made twice. The same key "
        "with another body is 422 `idempotency_key_reused`. Keys last as long as their request. The "
        "IETF draft 'The Idempotency-Key HTTP Header Field'.",
    ),
]


_KEEPALIVE = ": keep-alive\n\n"
"""An SSE comment: clients ignore it, proxies see a stream that is alive."""


async def _with_keepalives(
    rows: AsyncGenerator[dict[str, Any], None], seconds: float
) -> AsyncIterator[dict[str, Any] | None]:
    """``rows``, with a None whenever ``seconds`` pass without one (a queued request may sit for minutes,
    and proxies cut a connection that stays silent for one or two)."""
    pending: asyncio.Task[dict[str, Any]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(rows))
            done, _ = await asyncio.wait({pending}, timeout=seconds)
            if not done:
                yield None
                continue
            try:
                row = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield row
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await rows.aclose()


def _replay_header(row: Mapping[str, Any]) -> dict[str, str]:
    return {"Idempotent-Replayed": "true"} if row.get("replayed") else {}


def _created_headers(request: Request, route: str, parameter: str, row: Mapping[str, Any]) -> dict[str, str]:
    """``Location`` of what a submit made (or found again), and whether it was found again."""
    location = str(request.url_for(route, **{parameter: row["id"]}))
    return {"Location": location, **_replay_header(row)}


ACTIONS: Mapping[Action, str] = {
    Action.SUBMIT: "create_edit",
    Action.SUBMIT_BATCH: "create_batch",
    Action.GET: "get_edit",
    Action.LIST: "list_edits",
    Action.CANCEL: "cancel_edit",
    Action.WAIT: "get_edit",  # with ?wait=true (and on create_edit)
    Action.FOLLOW: "edit_events",
    Action.GET_BATCH: "get_batch",
    Action.CANCEL_BATCH: "cancel_batch",
}
"""The route (by name) that serves each of the user's actions."""


class RestApi:
    """The ``/v1`` router over the user's actions; opened and closed with the app."""

    def __init__(self, actions: UserActions, verifier: TokenVerifier, stream_tokens: StreamTokens) -> None:
        self.actions = actions
        self.verifier = verifier
        self.stream_tokens = stream_tokens
        self.max_body_bytes = edit_body_bytes(MAX_IMAGES, actions.limits.max_bytes)

    async def open(self) -> None:
        await self.actions.open()

    async def close(self) -> None:
        await self.actions.close()

    def current_user(self, request: Request, _: HTTPAuthorizationCredentials | None = _BEARER_HEADER) -> User:
        # The header is read whole (the verifier refuses other schemes); the dependency documents it.
        return self.verifier.verify(request.headers.get("authorization"))

    def stream_user(
        self,
        request: Request,
        request_id: uuid.UUID,
        token: str | None = _STREAM_TOKEN_QUERY,
        _: HTTPAuthorizationCredentials | None = _BEARER_HEADER,
    ) -> User:
        """The bearer of the access token, or of a stream token minted for this request."""
        if token is not None:
            return self.stream_tokens.verify(token, request_id)
        return self.verifier.verify(request.headers.get("authorization"))

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v1", tags=["edits"], responses=_ERRORS)
        # A default, not Annotated: with postponed annotations FastAPI resolves names in module scope.
        current_user = Depends(self.current_user)
        stream_user = Depends(self.stream_user)
        actions = self.actions

        @router.post(
            "/edits",
            status_code=status.HTTP_202_ACCEPTED,
            response_model=EditAccepted | EditView,
            openapi_extra=_CREATE_BODY,
            responses={200: {"model": EditView, "description": "Finished (`wait=true`)"}},
            name="create_edit",
        )
        async def create_edit(
            request: Request,
            user: User = current_user,
            wait: Annotated[bool, Query(description="Wait for the result (up to `timeout`)")] = False,
            timeout: Annotated[float, Query(gt=0, le=WAIT_MAX_SECONDS)] = 120,
            idempotency_key: IdempotencyHeader = None,
        ) -> JSONResponse:
            """Upload the images, create the request and answer 202, or with `wait=true` the result.
            With an `Idempotency-Key`, a retry gets the request the key made (`Idempotent-Replayed:
            true`) and nothing runs twice; the same key with another body is 422
            `idempotency_key_reused`."""
            if wait:
                actions.ensure_can_wait(user)  # before reading the body: the cheap refusal
            # One of the user's submissions in flight from before the body is read (a body may be
            # 84 MB): past their share, 429 too_many_submissions and nothing read.
            async with actions.submission(user):
                params, images, options = await _read_create(request, self.max_body_bytes)
                options = dataclasses.replace(
                    options, idempotency_key=_keyed(options.idempotency_key, idempotency_key)
                )
                if wait:
                    # One of the user's waits is held from before the upload: a refusal creates nothing.
                    row = await actions.submit_and_wait(user, images, params, options, timeout=timeout)
                else:
                    row = await actions.submit(user, images, params, options)
            if wait and row["status"] in TERMINAL:
                return JSONResponse(
                    (await self._finished(row)).model_dump(mode="json"), headers=_replay_header(row)
                )
            accepted = EditAccepted(
                id=row["id"],
                status=row["status"],
                status_url=str(request.url_for("get_edit", request_id=row["id"])),
                events_url=str(request.url_for("edit_events", request_id=row["id"])),
                cost=row.get("cost"),
            )
            return JSONResponse(
                accepted.model_dump(mode="json"),
                status_code=status.HTTP_202_ACCEPTED,
                headers=_created_headers(request, "get_edit", "request_id", row),
            )

        @router.get(
            "/edits",
            response_model=list[EditView],
            name="list_edits",
            responses={200: {"headers": {"Link": {"description": 'The next page: `<url>; rel="next"`'}}}},
        )
        async def list_edits(
            request: Request,
            response: Response,
            user: User = current_user,
            limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT,
            before: Annotated[
                uuid.UUID | None,
                Query(description="The next page: the edits created before this one (the last you got)."),
            ] = None,
            status_: Annotated[
                list[str] | None,
                Query(alias="status", description=f"Only these statuses (repeat it): {', '.join(STATUSES)}."),
            ] = None,
        ) -> list[EditView]:
            """Your edits, newest first, with their signed URLs (output, live preview). A full page
            has a `Link: <...>; rel="next"` header (and the next page starts `before` its last edit)."""
            rows = await actions.recent(user, limit, before=before, statuses=status_ or ())
            if len(rows) == limit:
                following = request.url.include_query_params(before=str(rows[-1]["id"]))
                response.headers["Link"] = f'<{following}>; rel="next"'
            return [_view(row) for row in rows]

        @router.get("/edits/{request_id}", response_model=EditView, name="get_edit")
        async def get_edit(
            request_id: uuid.UUID,
            user: User = current_user,
            wait: Annotated[bool, Query(description="Wait until it is finished (up to `timeout`)")] = False,
            timeout: Annotated[float, Query(gt=0, le=WAIT_MAX_SECONDS)] = 120,
        ) -> EditView:
            """Status, progress, result and a signed URL of the output; with `wait=true`, once finished
            (or as it stands after `timeout`), with the result as base64 in its format (`image_media_type`)."""
            if not wait:
                return _view(await actions.get(user, request_id))
            final = await actions.wait(user, request_id, timeout)
            return await self._finished(final) if final["status"] in TERMINAL else _view(final)

        @router.post(
            "/edits/{request_id}/stream-token",
            response_model=StreamTokenView,
            name="create_stream_token",
        )
        async def create_stream_token(
            request: Request, request_id: uuid.UUID, user: User = current_user
        ) -> StreamTokenView:
            """A short-lived token that opens this request's event stream without a header (for a
            browser's `EventSource`): `new EventSource(events_url)`. It lasts `STREAM_TOKEN_SECONDS`
            (60 s; never past your access token) and opens this request's stream only; once the
            stream ends or fails, ask for a new one."""
            await actions.get(user, request_id)  # 404 unless it is the caller's
            minted = self.stream_tokens.mint(user, request_id)
            events_url = request.url_for("edit_events", request_id=request_id).include_query_params(
                token=minted.token
            )
            return StreamTokenView(
                token=minted.token, expires_at=minted.expires_at, events_url=str(events_url)
            )

        @router.get(
            "/edits/{request_id}/events",
            name="edit_events",
            response_class=StreamingResponse,
            responses={
                200: {
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    "description": "`event: progress` lines, then `event: done`; each `data:` a JSON object "
                    "`{id, status, progress}` (`done` adds `error`, `error_code`)",
                }
            },
        )
        async def edit_events(request_id: uuid.UUID, user: User = stream_user) -> StreamingResponse:
            """Server-sent events: `progress` on every change of status, progress or live preview
            (`preview_url`, `preview_step`), then `done` (with `output_url` when it succeeded).
            Authenticate with the bearer header, or from a browser with `?token=` from
            `POST /v1/edits/{id}/stream-token`. A stream lasts at most `STREAM_MAX_SECONDS`; a user
            holds at most `WAITS_PER_USER` streams and waits at once (429 beyond)."""
            rows = await actions.follow(user, request_id)  # 404 or 429 before the stream starts
            # The first row takes the user's place among their streams: a second stream racing this one
            # past the bound is refused here, with a status code, not cut short after its 200.
            first = await anext(rows)

            async def stream() -> AsyncIterator[str]:
                yield await self._event(first)
                async for item in _with_keepalives(rows, SSE_KEEPALIVE_SECONDS):
                    yield _KEEPALIVE if item is None else await self._event(item)

            return StreamingResponse(
                stream(),
                media_type="text/event-stream",
                # no-transform and X-Accel-Buffering: proxies pass each event on as it comes.
                headers={"cache-control": "no-cache, no-transform", "x-accel-buffering": "no"},
            )

        @router.delete("/edits/{request_id}", response_model=EditView, name="cancel_edit")
        async def cancel_edit(request_id: uuid.UUID, user: User = current_user) -> EditView:
            """Cancel a waiting or running request (a running edit stops between steps)."""
            return _view(await actions.cancel(user, request_id))

        self._batch_routes(router, current_user)
        return router

    async def _event(self, row: dict[str, Any]) -> str:
        """One server-sent event: ``progress`` (with the live preview), or ``done`` once finished."""
        payload: dict[str, Any] = {"id": str(row["id"]), "status": row["status"], "progress": row["progress"]}
        if row["status"] in TERMINAL:
            payload.update(
                error=row["error_message"],
                error_code=row["error_code"],
                output_url=await self.actions.output_url(row),
            )
            return f"event: done\ndata: {json.dumps(payload)}\n\n"
        payload.update(preview_step=row.get("preview_step"), preview_url=await self.actions.preview_url(row))
        return f"event: progress\ndata: {json.dumps(payload)}\n\n"

    async def _finished(self, row: dict[str, Any]) -> EditView:
        """A finished request, with its output as base64 (and its media type) when it succeeded."""
        if row["status"] != "succeeded" or not row.get("output_url"):
            return _view(row)
        output = await self.actions.output(row)
        return _view(row, image=base64.b64encode(output.data).decode(), image_media_type=output.media_type)

    def _batch_routes(self, router: APIRouter, current_user: Any) -> None:
        actions = self.actions

        @router.post(
            "/batches",
            status_code=status.HTTP_202_ACCEPTED,
            response_model=BatchView,
            openapi_extra=_BATCH_BODY,
            name="create_batch",
        )
        async def create_batch(
            request: Request, user: User = current_user, idempotency_key: IdempotencyHeader = None
        ) -> JSONResponse:
            """The same edit over many images: one request per image, all created or none (a batch
            over your limits is refused whole, 429). Follow it with `GET /v1/batches/{id}`. With an
            `Idempotency-Key`, a retry gets the batch the key made (`Idempotent-Replayed: true`)."""
            async with actions.submission(user):  # from before the body is read, as for one edit
                body = await _read_batch(request, self.max_body_bytes)
                batch = await actions.submit_batch(
                    user,
                    body.images,
                    body.references,
                    body.params,
                    object_paths=body.object_paths,
                    reference_paths=body.reference_paths,
                    idempotency_key=_keyed(body.idempotency_key, idempotency_key),
                )
            return JSONResponse(
                _batch_view(batch).model_dump(mode="json"),
                status_code=status.HTTP_202_ACCEPTED,
                headers=_created_headers(request, "get_batch", "batch_id", batch),
            )

        @router.get("/batches/{batch_id}", response_model=BatchView, name="get_batch")
        async def get_batch(batch_id: uuid.UUID, user: User = current_user) -> BatchView:
            """Counts by status, progress and every request of one of your batches."""
            return _batch_view(await actions.get_batch(user, batch_id))

        @router.delete("/batches/{batch_id}", response_model=BatchView, name="cancel_batch")
        async def cancel_batch(batch_id: uuid.UUID, user: User = current_user) -> BatchView:
            """Cancel every request of the batch that has not finished; finished ones stay as they are."""
            return _batch_view(await actions.cancel_batch(user, batch_id))

    def install(self, app: FastAPI) -> None:
        """Mount the router (the app gives its errors the one shape: ``errors.install_error_handlers``)."""
        app.include_router(self.router())
