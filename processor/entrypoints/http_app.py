"""The HTTP app: database webhook, health, readiness and metrics.

The webhook is only a wake-up hint: it checks the shared secret in constant time,
answers 202 at once and never trusts the payload for state (the worker claims from
the table). Duplicates and late deliveries are harmless.
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

import processor
from processor.core.service import ProcessorService
from processor.domain.rules import WEBHOOK_MAX_BODY_BYTES
from processor.entrypoints.bodies import json_body, read_capped_body
from processor.entrypoints.errors import ErrorResponse, install_error_handlers
from processor.entrypoints.rest import RestApi
from processor.entrypoints.try_page import TryPage, install_try_page

if TYPE_CHECKING:  # the `mcp` extra: imported only when an MCP server is mounted
    from mcp.server.mcpserver import MCPServer

WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
SETUP_FAILED_DETAIL = (
    "the processor could not start working (the model, the LoRA allowlist); its log says why"
)


class WebhookRecord(BaseModel):
    """The part of the row the webhook needs: its id (everything else is re-read)."""

    model_config = ConfigDict(extra="allow")
    id: uuid.UUID


class DatabaseWebhook(BaseModel):
    """A Supabase Database Webhook body (``supabase_functions.http_request`` shape)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["INSERT", "UPDATE", "DELETE"]
    table: str
    schema_: str = Field(alias="schema")
    record: WebhookRecord | None = None
    old_record: dict[str, Any] | None = None


_WEBHOOK_BODY = json_body(DatabaseWebhook)


class Accepted(BaseModel):
    accepted: bool = True


class Readiness(BaseModel):
    state: str
    database: bool
    detail: str | None = None
    # The database's own lease sweep (pg_cron): "scheduled", "not_scheduled", "pg_cron_missing",
    # "unknown"; null where the queue has none. Informative: it does not make the answer 503,
    # since a running processor sweeps too.
    lease_sweep: str | None = None


class _RedactStreamTokens(logging.Filter):
    """Access log lines show ``?token=[redacted]``: a stream token in a URL opens a stream until it
    expires, and logs are read by more people than the user."""

    _TOKEN = re.compile(r"([?&]token=)[^&\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._TOKEN.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


def redact_stream_tokens_in_access_logs() -> None:
    """Once per process, whatever the logging set-up: uvicorn logs each request to ``uvicorn.access``."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(item, _RedactStreamTokens) for item in access.filters):
        access.addFilter(_RedactStreamTokens())


def install_health(app: FastAPI, service: ProcessorService) -> None:
    """``/healthz`` and ``/readyz``: on the full app, and alone on the worker's health server."""

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "alive"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz() -> JSONResponse:
        """200 only when the model is loaded and warmed up and the database answers."""
        state = service.state
        database = await service.database_reachable()
        ready = state in ("ready", "busy") and database
        body = Readiness(
            state=state,
            database=database,
            # Anyone may call /readyz: the exception itself (paths, hosts) is in the log only.
            detail=SETUP_FAILED_DETAIL if service.setup_error else None,
            lease_sweep=await service.lease_sweep(),
        )
        return JSONResponse(
            body.model_dump(),
            status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
        )


def create_health_app(service: ProcessorService) -> FastAPI:
    """Only ``/healthz`` and ``/readyz`` (``edit-processor worker`` with ``WORKER_HEALTH_PORT``).

    No lifespan: the worker command starts and stops ``service`` itself, so a model that fails to
    load still ends the process (exit 1) instead of leaving a pod that is alive and never ready."""
    app = FastAPI(title="qwen-edit-processor worker", version=processor.__version__, openapi_url=None)
    install_error_handlers(app)
    install_health(app, service)
    return app


CORS_ALLOWED_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID",
                        "Mcp-Session-Id", "Mcp-Protocol-Version")  # fmt: skip
"""What a browser app sends besides the CORS-safelisted headers (MCP's are for browser MCP clients)."""
CORS_EXPOSED_HEADERS = ("Retry-After", "Location", "Idempotent-Replayed", "Link", "Mcp-Session-Id")
"""What a browser app reads from an answer (a page may read only the safelisted ones unless told)."""


def create_app(
    service: ProcessorService,
    *,
    webhook_secret: SecretStr | None,
    metrics_token: SecretStr | None = None,
    api: RestApi | None = None,
    mcp: MCPServer | None = None,
    cors_origins: Sequence[str] = (),
    cors_origin_regex: str | None = None,
    page: TryPage | None = None,
) -> FastAPI:
    """The app; its lifespan starts and drains ``service`` (and opens the REST API and MCP).

    ``cors_origins`` (``CORS_ORIGINS``) and ``cors_origin_regex`` (``dev``'s loopback pages): the
    origins whose pages may call it from a browser. Credentials are a bearer header, never a cookie,
    so no answer allows credentials. ``page``: the page to try an edit at ``/try/`` (``TRY_PAGE``);
    it needs the REST API, so it is served only with one."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if api is not None:
                await api.open()
                stack.push_async_callback(api.close)
            if mcp is not None:
                await stack.enter_async_context(mcp.session_manager.run())
            await service.start()
            stack.push_async_callback(service.stop)
            yield

    # FastAPIOffline: /docs and /redoc with Swagger UI's and ReDoc's files from the package, not a CDN.
    app = FastAPIOffline(
        title="qwen-edit-processor",
        version=processor.__version__,
        summary="Qwen-Image-Edit-2509 image edits behind Supabase",
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    install_error_handlers(app)
    redact_stream_tokens_in_access_logs()
    if cors_origins or cors_origin_regex:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_origin_regex=cors_origin_regex,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=list(CORS_ALLOWED_HEADERS),
            expose_headers=list(CORS_EXPOSED_HEADERS),
            max_age=600,
        )
    if api is not None:
        api.install(app)
        if page is not None:
            install_try_page(app, page)
    secret = webhook_secret

    async def require_webhook_secret(
        x_webhook_secret: Annotated[str | None, Header(alias=WEBHOOK_SECRET_HEADER)] = None,
    ) -> None:
        # A dependency runs before the body is validated: a caller without the secret
        # learns nothing about the expected body, and no work is done.
        if (
            secret is None
            or x_webhook_secret is None
            or not hmac.compare_digest(x_webhook_secret.encode(), secret.get_secret_value().encode())
        ):
            raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="invalid webhook secret")

    @app.post(
        "/webhooks/edit-requests",
        status_code=status.HTTP_202_ACCEPTED,
        dependencies=[Depends(require_webhook_secret)],
        openapi_extra=_WEBHOOK_BODY,
        responses={
            401: {"model": ErrorResponse, "description": "Missing or wrong shared secret"},
            413: {
                "model": ErrorResponse,
                "description": f"The body is over {WEBHOOK_MAX_BODY_BYTES:,} bytes",
            },
            422: {"model": ErrorResponse, "description": "The body is not a database webhook"},
        },
    )
    async def edit_request_webhook(request: Request) -> Accepted:
        """Wake the worker. The table, not the payload, is the source of truth."""
        # Read here, not as a parameter: FastAPI would parse a declared body before the secret
        # dependency runs, so callers without the secret could make the app read and parse it.
        raw = await read_capped_body(request, WEBHOOK_MAX_BODY_BYTES)
        try:
            body = DatabaseWebhook.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None
        service.wake(body.record.id if body.record else None)
        return Accepted()

    install_health(app, service)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text exposition format",
            },
            401: {"model": ErrorResponse, "description": "Missing or wrong METRICS_TOKEN"},
            404: {"model": ErrorResponse, "description": "METRICS_TOKEN unset"},
        },
    )
    async def metrics(request: Request) -> Response:
        """Prometheus text format, for the bearer of ``METRICS_TOKEN`` (queue depths and timings are
        the operator's business); off when no token is configured."""
        if metrics_token is None:
            raise HTTPException(
                status_code=status.HTTP_404_NOT_FOUND, detail="metrics are off (no METRICS_TOKEN)"
            )
        # Read here rather than declared: it is a credential, not a parameter for the schema.
        authorization = request.headers.get("authorization")
        expected = f"Bearer {metrics_token.get_secret_value()}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="invalid metrics token")
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if mcp is not None:
        from mcp.server.transport_security import TransportSecuritySettings

        # Bearer tokens are verified per call, so the DNS-rebinding guard (meant for
        # unauthenticated local servers) would only refuse legitimate Host headers.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        # Its route joins the app's (a mount at "/" would answer every unknown path itself, in
        # Starlette's plain text); the lifespan above runs its session manager.
        transport = mcp.streamable_http_app(streamable_http_path="/mcp", transport_security=security)
        app.router.routes.extend(transport.routes)
    return app
