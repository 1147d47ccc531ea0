"""One error shape for every answer of the HTTP app: ``{"error": {"code": "<reason>", "message": "..."}}``.

The REST API's refusals, the webhook's and ``/metrics``' (``HTTPException``), unknown routes (404
``not_found``), wrong methods (405 ``method_not_allowed``, with ``Allow``), bodies that fail
validation (422 ``invalid_request``) and the core's ``ProcessorError`` (by class: ``NotFound`` 404,
``AlreadyFinished`` 409, ``InvalidInput`` 422, ``LimitExceeded`` 429, ``TransientError`` 503). Every
429 carries ``Retry-After``: the refusal's own estimate where it has one, else ``RETRY_AFTER_SECONDS``
of its reason (``RETRY_AFTER_SECONDS``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from processor.domain.errors import (
    AlreadyFinished,
    InvalidInput,
    LimitExceeded,
    NotFound,
    ProcessorError,
    TransientError,
    Unauthorized,
)
from processor.domain.reasons import ReasonCode
from processor.domain.rules import (
    LIMIT_RETRY_SECONDS,
    QUOTA_RETRY_SECONDS,
    TOO_MANY_SUBMISSIONS_RETRY_SECONDS,
    TOO_MANY_WAITS_RETRY_SECONDS,
)


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """The one error shape of the API."""

    error: ErrorBody


class ApiError(Exception):
    """An answer other than success, with its HTTP status and reason code."""

    def __init__(
        self,
        status_code: int,
        code: ReasonCode,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


_STATUS_CODES: Mapping[int, ReasonCode] = {
    400: ReasonCode.INVALID_REQUEST,
    401: ReasonCode.UNAUTHORIZED,
    404: ReasonCode.NOT_FOUND,
    405: ReasonCode.METHOD_NOT_ALLOWED,
    413: ReasonCode.BODY_TOO_LARGE,
    422: ReasonCode.INVALID_REQUEST,
    429: ReasonCode.LIMIT_EXCEEDED,
    503: ReasonCode.TRANSIENT_ERROR,
}
"""The reason code of a bare ``HTTPException`` (Starlette's routing, the webhook, ``/metrics``)."""


RETRY_AFTER_SECONDS: Mapping[str, int] = {
    ReasonCode.TOO_MANY_WAITS: TOO_MANY_WAITS_RETRY_SECONDS,
    ReasonCode.TOO_MANY_SUBMISSIONS: TOO_MANY_SUBMISSIONS_RETRY_SECONDS,
    ReasonCode.QUOTA_EXCEEDED: QUOTA_RETRY_SECONDS,
    ReasonCode.LIMIT_EXCEEDED: LIMIT_RETRY_SECONDS,
}
"""``Retry-After`` of a 429 whose refusal has no estimate of its own, by reason."""


def error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error shape; a 429 always says when to come back."""
    merged = dict(headers or {})
    if status_code == 429 and not any(name.lower() == "retry-after" for name in merged):
        merged["Retry-After"] = str(retry_after(code, None))
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status_code, headers=merged
    )


def retry_after(code: str, estimate: float | None) -> int:
    """Whole seconds for ``Retry-After`` (RFC 9110 §10.2.3): the estimate rounded up, at least 1,
    else the reason's default."""
    if estimate is not None and math.isfinite(estimate):
        return max(1, math.ceil(estimate))
    return RETRY_AFTER_SECONDS.get(code, LIMIT_RETRY_SECONDS)


def status_of(exc: ProcessorError) -> int:
    """The HTTP status of the core's refusal, by its class."""
    for kind, status_code in _STATUSES:
        if isinstance(exc, kind):
            return status_code
    return 500


_STATUSES: tuple[tuple[type[ProcessorError], int], ...] = (
    (Unauthorized, 401),
    (NotFound, 404),
    (AlreadyFinished, 409),
    (InvalidInput, 422),
    (LimitExceeded, 429),
    (TransientError, 503),
)


def install_error_handlers(app: FastAPI) -> None:
    """Give every error of ``app`` the one shape (call once per app, before it serves)."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status_code, exc.code, exc.message, exc.headers)

    async def processor_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProcessorError)
        status_code = status_of(exc)
        headers = {}
        if isinstance(exc, LimitExceeded):
            headers["Retry-After"] = str(retry_after(exc.reason, exc.retry_after))
        return error_response(status_code, exc.reason, exc.message, headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"{where}: {first.get('msg', 'invalid')}".strip(": ")
        return error_response(422, ReasonCode.INVALID_REQUEST, message)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _STATUS_CODES.get(exc.status_code, ReasonCode.INVALID_REQUEST)
        # Starlette's routing says only "Not Found" or "Method Not Allowed": say which.
        message = _ROUTING.get(str(exc.detail), str(exc.detail))
        return error_response(exc.status_code, code, message, exc.headers)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(ProcessorError, processor_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


_ROUTING: Mapping[str, str] = {
    "Not Found": "no such route",
    "Method Not Allowed": "this route does not take that method (the Allow header lists those it takes)",
}
