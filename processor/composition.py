"""The composition root: the one place that turns ``Settings`` into adapters, the core and the ways in.

Everything below it gets values, not ``Settings``. Heavy imports stay inside the builders, so
``edit-processor --help`` stays fast, the ComfyUI engine never loads diffusers, and the
diffusers engine never needs a websocket client.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from processor.core.editor_pool import EditorPool
from processor.core.lora_allowlist import report as report_allowlist
from processor.core.retention import Retention, RetentionReport
from processor.core.service import ProcessorService
from processor.core.user_actions import UserActions
from processor.core.webhooks import WebhookConfig, WebhookDispatcher
from processor.core.worker import Worker, WorkerConfig
from processor.domain.errors import ConfigurationError, ProcessorError, TransientError, install_extra
from processor.domain.images import ImageLimits, OutputEncoding
from processor.domain.ports.editor import Editor
from processor.domain.ports.loras import LoraAllowlist
from processor.domain.ports.queue import JobQueue
from processor.domain.ports.retention import RetentionPolicy
from processor.domain.ports.storage import ObjectStorage
from processor.domain.rules import INPUT_BUCKET, OUTPUT_BUCKET, OUTPUT_MEDIA_TYPES, SpeedPreset
from processor.observability.metrics import Metrics
from processor.settings import Settings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from processor.adapters.postgres.queue import PostgresJobQueue
    from processor.adapters.postgres.requests import EditRequests
    from processor.adapters.supabase_storage import SupabaseObjectStorage
    from processor.entrypoints.auth import TokenVerifier
    from processor.entrypoints.rest import RestApi
    from processor.entrypoints.runpod_handler import Job, Reporter
    from processor.entrypoints.try_page import TryPage


# Top-level modules of the `diffusers` extra (see pyproject.toml) that the engine imports or needs.
DIFFUSERS_EXTRA = {"torch", "torchvision", "diffusers", "transformers", "tokenizers", "accelerate"}
log = logging.getLogger(__name__)


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        min_side=settings.min_image_side,
        max_decode_seconds=settings.max_decode_seconds,
    )


def check_input_limit(settings: Settings) -> None:
    """Refuse to start when ``MAX_IMAGE_BYTES`` exceeds the ``edit-inputs`` bucket's ``file_size_limit``.

    Apps upload inputs to that bucket, and so does the REST API: Storage refuses anything above
    its limit, so a larger setting would promise what uploads cannot deliver. The processor does
    not raise the bucket's limit itself: that is the project's Storage policy (and Supabase's
    project-wide upload limit, which SQL cannot see, caps it again). An unreachable database is
    not refused here: the service waits for it and reports not ready, as it always did.
    """
    from processor.adapters.postgres.buckets import bucket_file_size_limit

    if settings.database_url is None:
        return
    try:
        limit = bucket_file_size_limit(settings.database_url, INPUT_BUCKET)
    except TransientError:
        log.warning("could not read the edit-inputs bucket's file_size_limit; not checked")
        return
    if limit is not None and settings.max_image_bytes > limit:
        raise ConfigurationError(
            f"MAX_IMAGE_BYTES={settings.max_image_bytes} exceeds the {INPUT_BUCKET} bucket's "
            f"file_size_limit ({limit} bytes), so Storage would refuse such uploads: lower "
            f"MAX_IMAGE_BYTES, or raise the bucket's limit (update storage.buckets set "
            f"file_size_limit = {settings.max_image_bytes} where id = '{INPUT_BUCKET}')"
        )


def check_output_types(settings: Settings) -> None:
    """Refuse to start when the ``edit-outputs`` bucket's ``allowed_mime_types`` leave out a format the
    processor writes: any request may name any of them, and Storage would refuse its result only after
    the GPU made it. Like ``check_input_limit``, an unreachable database is left to the service."""
    from processor.adapters.postgres.buckets import bucket_allowed_mime_types

    if settings.database_url is None:
        return
    try:
        allowed = bucket_allowed_mime_types(settings.database_url, OUTPUT_BUCKET)
    except TransientError:
        log.warning("could not read the edit-outputs bucket's allowed_mime_types; not checked")
        return
    missing = [] if allowed is None else sorted(set(OUTPUT_MEDIA_TYPES.values()) - set(allowed))
    if missing:
        raise ConfigurationError(
            f"the {OUTPUT_BUCKET} bucket's allowed_mime_types ({', '.join(allowed or [])}) leave out "
            f"{', '.join(missing)}, which requests may ask for (output_format): allow them (update "
            f"storage.buckets set allowed_mime_types = allowed_mime_types || array{missing!r} where id = "
            f"'{OUTPUT_BUCKET}')"
        )


def output_encoding(settings: Settings) -> OutputEncoding:
    """How results are encoded when their request names no format or quality."""
    return OutputEncoding(settings.output_format, settings.output_quality)


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        worker_id=settings.worker_id,
        lease_seconds=settings.lease_seconds,
        heartbeat_interval_seconds=settings.heartbeat_interval_seconds,
        progress_interval_seconds=settings.progress_interval_seconds,
        sweep_interval_seconds=settings.sweep_interval_seconds,
        worker_concurrency=settings.worker_concurrency,
        worker_prefetch=settings.worker_prefetch,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        image_limits=image_limits(settings),
        preview_every_steps=settings.preview_every_steps,
        preview_interval_seconds=settings.preview_interval_seconds,
        output_encoding=output_encoding(settings),
    )


def build_editor(settings: Settings, *, every_device: bool = False) -> Editor:
    """The editor ``EDIT_ENGINE`` names, loaded and ready; ``ConfigurationError`` when it cannot be.

    ``every_device`` (the worker and ``serve``): the diffusers engine once per device ``DEVICE`` gives
    (every visible GPU: ``engine_devices``), several as one ``EditorPool``; otherwise (the CLI, RunPod)
    one engine, on the first."""
    if settings.edit_engine == "comfyui":
        try:
            from processor.adapters.comfyui.editor import editor_from_settings
        except ModuleNotFoundError as error:
            raise missing_extra(error, "comfyui", {"websockets"}) from error

        auth = settings.comfyui_auth_header.get_secret_value() if settings.comfyui_auth_header else None
        return editor_from_settings(
            settings.comfyui_url, settings.comfyui_workflow, auth, settings.comfyui_timeout_seconds
        )
    try:
        from processor.adapters.diffusers.engine import DiffusersEditor
        from processor.adapters.diffusers.loading import engine_devices, resolve_device
    except ModuleNotFoundError as error:
        raise missing_extra(error, "diffusers", DIFFUSERS_EXTRA) from error

    devices = engine_devices(settings.device) if every_device else [resolve_device(settings.device)]
    editors: list[Editor] = []
    try:
        for device in devices:
            editors.append(
                DiffusersEditor.load(
                    settings.model_id,
                    revision=settings.model_revision,
                    cache_dir=settings.model_cache_dir,
                    device=device,
                    memory=settings.memory_mode,
                    quantization=settings.quantization,
                    warmup=settings.warmup,
                    **speed_options(settings),
                )
            )
    except BaseException:
        for editor in editors:
            editor.close()
        raise
    if len(editors) > 1:
        log.info("one engine per device", extra={"devices": [str(device) for device in devices]})
        return EditorPool(editors)
    return editors[0]


def missing_extra(error: ModuleNotFoundError, extra: str, packages: set[str]) -> Exception:
    """An engine whose optional packages are not installed: say which extra brings them.

    Any other missing module is a real fault, and is passed on unchanged.
    """
    if (error.name or "").partition(".")[0] not in packages:
        return error
    return ConfigurationError(
        f"EDIT_ENGINE={extra} needs the {extra!r} extra ({error.name} is not installed): "
        + install_extra(extra)
    )


def speed_options(settings: Settings) -> dict[str, Any]:
    """The diffusers engine's speed values from ``SPEED``, ``LIGHTNING_*``, ``LORAS``, ``COMPILE``…"""
    from processor.adapters.diffusers.accelerate import Accelerations
    from processor.adapters.diffusers.loras import AllowedLora, LoraSource
    from processor.adapters.diffusers.presets import KNOWN_LIGHTNING
    from processor.domain.errors import ConfigurationError

    lightning: dict[str, LoraSource] = {}
    for preset, text in (("fast", settings.lightning_8step_lora), ("fastest", settings.lightning_4step_lora)):
        if text is None:
            continue
        if text == "auto":
            known = KNOWN_LIGHTNING.get(settings.model_id, {})
            if preset not in known:
                raise ConfigurationError(
                    f"no published Lightning LoRA is known for MODEL_ID={settings.model_id}; "
                    "set LIGHTNING_8STEP_LORA / LIGHTNING_4STEP_LORA to a file"
                )
            text = known[preset]  # type: ignore[index]
        lightning[preset] = LoraSource.parse(text)
    return {
        "speed": settings.speed,
        "lightning": lightning,
        "loras": {
            name: AllowedLora(name, LoraSource.parse(lora.source), lora.scale)
            for name, lora in settings.loras.items()
        },
        "lora_cache_size": settings.lora_cache_size,
        "accelerations": Accelerations(
            compile=settings.compile,
            attention_backend=settings.attention_backend,
            fp8=settings.fp8,
            step_cache=settings.step_cache,
            step_cache_threshold=settings.step_cache_threshold,
        ),
    }


def build_queue(settings: Settings) -> PostgresJobQueue:
    from processor.adapters.postgres.queue import PostgresJobQueue

    settings.require("database_url")
    assert settings.database_url is not None
    return PostgresJobQueue(settings.database_url)


def build_storage(settings: Settings) -> SupabaseObjectStorage:
    from processor.adapters.supabase_storage import SupabaseObjectStorage

    settings.require("supabase_url", "supabase_service_role_key")
    assert settings.supabase_url is not None and settings.supabase_service_role_key is not None
    return SupabaseObjectStorage(
        settings.supabase_url,
        settings.supabase_service_role_key.get_secret_value(),
        timeout=settings.storage_timeout_seconds,
        attempts=settings.storage_retry_attempts,
    )


def build_user_requests(settings: Settings) -> EditRequests:
    from processor.adapters.postgres.requests import EditRequests

    settings.require("database_url")
    assert settings.database_url is not None
    return EditRequests(settings.database_url)


def build_webhooks(settings: Settings, metrics: Metrics | None = None) -> WebhookDispatcher | None:
    """The completion-webhook delivery loop (``WEBHOOK_*``), or None with ``WEBHOOK_DELIVERY=false``."""
    if not settings.webhook_delivery:
        return None
    from processor.adapters.postgres.webhooks import PostgresWebhookOutbox
    from processor.adapters.webhook_sender import HttpWebhookSender

    settings.require("database_url")
    assert settings.database_url is not None
    return WebhookDispatcher(
        PostgresWebhookOutbox(settings.database_url),
        HttpWebhookSender(
            allowed_hosts=settings.webhook_hosts(),
            allowed_ports=settings.webhook_ports(),
            allow_http=settings.webhook_allow_http,
            allow_private_addresses=settings.webhook_allow_private_addresses,
            timeout_seconds=settings.webhook_timeout_seconds,
        ),
        WebhookConfig(
            worker_id=settings.worker_id,
            concurrency=settings.webhook_concurrency,
            lease_seconds=settings.webhook_lease_seconds,
            poll_interval_seconds=settings.webhook_poll_interval_seconds,
        ),
        metrics=metrics,
    )


def retention_policy(settings: Settings) -> RetentionPolicy:
    """Hours from the settings; ``0`` keeps forever (``None`` to the core)."""

    def age(hours: float) -> timedelta | None:
        return timedelta(hours=hours) if hours > 0 else None

    return RetentionPolicy(
        input_age=age(settings.input_retention_hours),
        output_age=age(settings.output_retention_hours),
        orphan_grace=age(settings.orphan_grace_hours),
        batch_size=settings.retention_batch_size,
    )


def build_retention(settings: Settings, storage: ObjectStorage, metrics: Metrics | None = None) -> Retention:
    """Retention over ``storage`` (the service's, or one of its own for ``retention --once``)."""
    from processor.adapters.postgres.retention import PostgresRetentionStore

    settings.require("database_url")
    assert settings.database_url is not None
    return Retention(
        PostgresRetentionStore(settings.database_url),
        storage,
        retention_policy(settings),
        worker_id=settings.worker_id,
        interval_seconds=settings.retention_interval_seconds,
        run_seconds=settings.retention_run_seconds,
        metrics=metrics,
    )


async def run_retention(settings: Settings, stop: asyncio.Event | None = None) -> RetentionReport:
    """``edit-processor retention``: one run (``stop`` is None), or every interval until ``stop``;
    with storage and a store of its own. Returns the (last) run's report."""
    settings.require("database_url", "supabase_url", "supabase_service_role_key")
    policy = retention_policy(settings)
    if policy.keeps_everything:
        raise ConfigurationError(
            "retention keeps everything: INPUT_RETENTION_HOURS, OUTPUT_RETENTION_HOURS and ORPHAN_GRACE_HOURS are all 0"
        )
    storage = build_storage(settings)
    retention = build_retention(settings, storage)
    await storage.open()
    await retention.open()
    try:
        if stop is None:
            return await retention.run_once()
        await retention.run(stop)
        return RetentionReport()
    finally:
        await retention.close()
        await storage.close()


def build_service(settings: Settings, *, listen_for_notifications: bool = True) -> ProcessorService:
    """The production wiring: Postgres queue and LISTEN, Supabase Storage, the configured editor,
    completion webhooks."""
    settings.require("database_url", "supabase_url", "supabase_service_role_key")
    from processor.adapters.postgres.notifications import PostgresNotifications

    assert settings.database_url is not None
    storage = build_storage(settings)
    metrics = Metrics()
    policy = retention_policy(settings)
    return ProcessorService(
        worker_config(settings),
        queue=build_queue(settings),
        storage=storage,
        editor_factory=lambda: build_editor(settings, every_device=True),
        wakeups=PostgresNotifications(settings.database_url) if listen_for_notifications else None,
        webhooks=build_webhooks(settings, metrics),
        metrics=metrics,
        retention=None if policy.keeps_everything else build_retention(settings, storage, metrics),
        allowlist=build_lora_allowlist(settings),
        loras=lora_descriptions(settings),
        default_speed=default_speed(settings),
    )


def build_lora_allowlist(settings: Settings) -> LoraAllowlist:
    """Where ``LORAS`` is published for the database's insert check (``public.edit_loras``)."""
    from processor.adapters.postgres.loras import PostgresLoraAllowlist

    settings.require("database_url")
    assert settings.database_url is not None
    return PostgresLoraAllowlist(settings.database_url)


def lora_descriptions(settings: Settings) -> dict[str, str]:
    """The LoRAs this processor can run, as the allowlist publishes them: each name of ``LORAS`` with its
    description; none with ``EDIT_ENGINE=comfyui``, which runs no request LoRAs."""
    if settings.edit_engine == "comfyui":
        return {}
    return {name: lora.description for name, lora in settings.loras.items()}


def default_speed(settings: Settings) -> SpeedPreset:
    """What a request naming no speed runs at, as the allowlist publishes it for the charge: ``SPEED``;
    ``quality`` with ``EDIT_ENGINE=comfyui``, whose workflow runs its own steps with CFG."""
    return "quality" if settings.edit_engine == "comfyui" else settings.speed


def build_verifier(settings: Settings) -> TokenVerifier:
    from processor.entrypoints.auth import TokenVerifier

    secret = settings.supabase_jwt_secret.get_secret_value() if settings.supabase_jwt_secret else None
    return TokenVerifier(jwt_secret=secret, jwks_url=settings.jwks_url())


def build_user_actions(settings: Settings, storage: ObjectStorage | None = None) -> UserActions:
    """The user's actions, as the users, over ``storage`` (the service's, when one runs in this process)."""
    from processor.adapters.postgres.changes import PostgresRowChanges

    requests = build_user_requests(settings)
    assert settings.database_url is not None  # build_user_requests required it
    return UserActions(
        requests,
        storage or build_storage(settings),
        image_limits(settings),
        PostgresRowChanges(settings.database_url),
        owns_storage=storage is None,
        signed_url_seconds=settings.signed_url_seconds,
    )


def build_rest_api(settings: Settings, service: ProcessorService) -> RestApi:
    """The REST API over the service's storage adapter and a pool of its own (rows as the user)."""
    from processor.entrypoints.rest import RestApi
    from processor.entrypoints.stream_tokens import StreamTokens

    settings.require("supabase_service_role_key")
    assert settings.supabase_service_role_key is not None
    # Every replica has the service key: a stream token one mints, any other verifies.
    tokens = StreamTokens.derived_from(settings.supabase_service_role_key.get_secret_value())
    return RestApi(build_user_actions(settings, service.storage), build_verifier(settings), tokens)


def try_page(settings: Settings) -> TryPage | None:
    """The page to try an edit (``TRY_PAGE``): Auth at ``{SUPABASE_URL}/auth/v1`` when the publishable
    key is set (else the page takes a pasted access token), images from ``SUPABASE_URL``."""
    from processor.entrypoints.try_page import TryPage

    if not settings.try_page:
        return None
    signs_in = settings.supabase_url is not None and settings.supabase_anon_key is not None
    return TryPage(
        auth_url=f"{settings.supabase_url}/auth/v1" if signs_in else None,
        anon_key=settings.supabase_anon_key if signs_in else None,
        storage_url=settings.supabase_url,
        default_speed=settings.speed,
        default_format=settings.output_format,
        max_image_bytes=settings.max_image_bytes,
    )


def build_mcp(api: RestApi | None) -> MCPServer | None:
    """MCP tools over the REST API's actions (same users, same rows); None without the REST API or
    without the `mcp` extra."""
    try:
        from processor.entrypoints.mcp_tools import create_mcp_server
    except ModuleNotFoundError as error:
        if error.name is None or error.name.partition(".")[0] != "mcp":
            raise
        log.warning("MCP is off: the mcp package is not installed (%s)", install_extra("mcp"))
        return None

    return None if api is None else create_mcp_server(api.actions, api.verifier)


def build_stdio_mcp(settings: Settings) -> MCPServer:
    """MCP over stdio as the user whose token is ``MCP_ACCESS_TOKEN``; it opens its own resources."""
    from processor.entrypoints.mcp_tools import create_mcp_server

    settings.require("database_url", "supabase_url", "supabase_service_role_key", "mcp_access_token")
    assert settings.mcp_access_token is not None
    return create_mcp_server(
        build_user_actions(settings),
        build_verifier(settings),
        stdio_token=settings.mcp_access_token.get_secret_value(),
        open_resources=True,
    )


def build_row_runner(settings: Settings) -> Callable[[Editor, uuid.UUID], Awaitable[str | None]]:
    """For RunPod's ``edit_request_id`` jobs: claim that row and run it exactly as the worker does."""

    sweep_checked = published = False
    loras = lora_descriptions(settings)

    async def run_row(editor: Editor, request_id: uuid.UUID) -> str | None:
        nonlocal sweep_checked, published
        if not published:
            # What a processor does at start-up, on the first row job of a worker: the database
            # checks requests against this worker's LORAS (once published; else on the next job).
            try:
                change = await build_lora_allowlist(settings).publish(
                    loras, default_speed=default_speed(settings)
                )
                report_allowlist(change, loras)
                published = True
            except TransientError as exc:
                log.warning("the LoRA allowlist is not published yet (%s)", exc)
        queue, storage = build_queue(settings), build_storage(settings)
        await queue.open()
        try:
            if not sweep_checked:
                # Scale to zero relies on the database's own lease sweep: while no worker runs,
                # nothing else requeues a lapsed lease. Schedule it, or say that it is missing.
                sweep_checked = True
                await _check_lease_sweep(queue)
            await storage.open()
            try:
                worker = Worker(queue=queue, storage=storage, editor=editor, config=worker_config(settings))
                return await worker.run_one(request_id)
            finally:
                await storage.close()
        finally:
            await queue.close()

    return run_row


async def _check_lease_sweep(queue: JobQueue) -> None:
    try:
        sweep = await queue.ensure_lease_sweep()
    except ProcessorError as exc:
        sweep = f"unknown ({exc})"
    if sweep != "scheduled":
        log.warning(
            "no lease sweep is scheduled in the database (%s): with workers scaled to zero, lapsed "
            "leases stay lapsed; enable pg_cron and run select public.ensure_edit_request_sweep()",
            sweep,
        )


def build_runpod_handler(
    settings: Settings, editor: Editor, report: Reporter | None = None
) -> Callable[[Job], Awaitable[dict[str, Any]]]:
    from processor.entrypoints.runpod_handler import make_handler, runpod_progress

    return make_handler(
        editor,
        image_limits(settings),
        output_encoding(settings),
        build_row_runner(settings),
        report=report or runpod_progress,
    )
