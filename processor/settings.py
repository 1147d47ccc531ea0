"""Configuration: one ``Settings`` class read from environment variables (and ``.env``).

Every field maps to the upper-case environment variable of the same name
(``lease_seconds`` is ``LEASE_SECONDS``). Fields a command does not need may be
absent; ``Settings.require`` names the missing ones at start-up so a service never
starts half-configured.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from processor.domain import rules, webhook_urls
from processor.domain.errors import ConfigurationError
from processor.domain.rules import (
    LORA_NAME,
    DeviceChoice,
    MemoryMode,
    OutputFormat,
    Quantization,
    SpeedPreset,
)

_ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[^/\s:\[\]]+)(:[0-9]{1,5})?")
"""A web origin as browsers send it in ``Origin``."""


def _default_worker_id() -> str:
    # Unique per process: host, pid and a random suffix (a restarted pid must not reuse an old lease).
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class LoraSetting(BaseModel):
    """One allowlisted request LoRA (``LORAS``)."""

    source: str
    scale: float = Field(default=rules.DEFAULT_LORA_SCALE, ge=rules.MIN_LORA_SCALE, le=rules.MAX_LORA_SCALE)
    description: str = Field(default="", max_length=500)
    """Shown to users beside the name (``public.edit_loras.description``)."""


class Settings(BaseSettings):
    """All settings of the processor. See docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", protected_namespaces=()
    )

    # --- Supabase and the database ----------------------------------------------------------------
    supabase_url: str | None = None
    """Project URL, e.g. ``https://xyz.supabase.co`` (Storage is reached at ``/storage/v1``)."""
    supabase_service_role_key: SecretStr | None = None
    """Service role JWT or ``sb_secret_`` key. Server-side only; never sent to clients."""
    database_url: str | None = Field(default=None, repr=False)  # may hold a password
    """Direct (session-mode) Postgres URL: LISTEN needs a real session, not a transaction pooler."""
    webhook_secret: SecretStr | None = None
    metrics_token: SecretStr | None = None
    """Bearer token Prometheus sends to ``/metrics``; unset, ``/metrics`` is off (answers 404)."""
    """Shared secret the database webhook sends in ``X-Webhook-Secret``."""
    supabase_jwt_secret: SecretStr | None = None
    """Legacy HS256 JWT secret, to verify users' access tokens (REST API, MCP over HTTP)."""
    supabase_jwks_url: str | None = None
    """JWKS of the project's asymmetric signing keys; default ``{SUPABASE_URL}/auth/v1/.well-known/jwks.json``."""
    signed_url_seconds: int = Field(default=rules.DEFAULT_SIGNED_URL_SECONDS, ge=60)
    """Lifetime of the signed output URLs the REST API hands out."""
    mcp_access_token: SecretStr | None = None
    """A user's access token for ``edit-processor mcp`` (stdio): the edits belong to that user."""
    supabase_anon_key: str | None = None
    """The project's publishable (anon) key, public by design: the try page (``TRY_PAGE``) sends it to
    Supabase Auth to sign users in with email and password. Unset: the page takes a pasted access token."""

    # --- Engine -----------------------------------------------------------------------------------
    edit_engine: Literal["diffusers", "comfyui"] = "diffusers"
    """``diffusers``: load the model in this process. ``comfyui``: drive a ComfyUI server that has it."""
    comfyui_url: str | None = None
    """ComfyUI's address, e.g. ``http://comfyui:8188`` (``EDIT_ENGINE=comfyui``)."""
    comfyui_auth_header: SecretStr | None = None
    """Sent as the ``Authorization`` header to ComfyUI (e.g. ``Bearer …`` behind an auth proxy)."""
    comfyui_timeout_seconds: float = Field(default=rules.DEFAULT_COMFYUI_TIMEOUT_SECONDS, gt=0)
    """Per HTTP call to ComfyUI; a run may take longer (its websocket must speak every 10 minutes)."""
    comfyui_workflow: Path | None = None
    """Your own API-format workflow with placeholders (see docs/engine.md); default: the packaged one."""

    # --- Model ------------------------------------------------------------------------------------
    model_id: str = "Qwen/Qwen-Image-Edit-2509"
    """Hub id or local folder of a ``QwenImageEditPlusPipeline``."""
    model_revision: str | None = None
    model_cache_dir: Path | None = None
    device: DeviceChoice = "auto"
    memory_mode: MemoryMode = "full"
    """How the model uses GPU memory. ``full``: everything on the GPU (about 60 GB in bf16).
    ``offload``: model CPU offload, each model on the GPU only while it runs (48 GB cards;
    slower, needs about 64 GB of host RAM). ``quantized``: the transformer in 4- or 8-bit
    weights (``QUANTIZATION``) and the text encoder offloaded: one 1024² edit in 24 GB."""
    quantization: Quantization = "nf4"
    """Transformer weights in ``MEMORY_MODE=quantized``: ``nf4`` (bitsandbytes 4-bit, CUDA only) or
    ``int8`` (torchao int8 weight-only; CUDA or CPU). Needs the ``quantization`` extra."""
    cpu_offload: bool = False
    """Older spelling of ``MEMORY_MODE=offload``, still honoured."""
    warmup: bool = True
    """Run one short edit after loading, so the first real request is not the slow one."""

    # --- Speed (docs/speed.md) ------------------------------------------------------------------------
    speed: SpeedPreset = "quality"
    """Preset of requests that name none: ``quality`` (40 steps, true CFG), ``fast`` (Lightning 8 steps,
    CFG off) or ``fastest`` (Lightning 4 steps). ``fast``/``fastest`` need their Lightning LoRA below."""
    lightning_8step_lora: str | None = None
    """The ``fast`` preset's LoRA: a local ``.safetensors`` file, ``owner/repo/path/file.safetensors`` on
    the hub, or ``auto`` (the published file for ``MODEL_ID``). Loaded once at start-up. Unset: no ``fast``."""
    lightning_4step_lora: str | None = None
    """The ``fastest`` preset's LoRA, as ``LIGHTNING_8STEP_LORA``."""
    loras: dict[str, LoraSetting] = Field(default_factory=dict)
    """Allowlist of request LoRAs, JSON: ``{"name": {"source": "<file or owner/repo/file>", "scale": 0.8}}``
    (or ``{"name": "<source>"}``, scale 1). Loaded on first use. The processor publishes the names to
    ``public.edit_loras`` at start-up (docs/decisions/0014-one-lora-allowlist.md)."""
    lora_cache_size: int = Field(default=rules.DEFAULT_LORA_CACHE_SIZE, ge=1, le=rules.MAX_LORA_CACHE_SIZE)
    """Request LoRAs kept loaded at once (least recently used evicted); also the most one request may use."""
    compile: bool = False
    """Regional ``torch.compile`` of the transformer blocks (lossless; compiles during warm-up)."""
    attention_backend: str | None = None
    """diffusers attention backend: ``native`` (SDPA), ``_native_cudnn``, ``_native_flash``, ``flash``, ``_flash_3``."""
    fp8: bool = False
    """Lossy: torchao float8 dynamic activations and weights on the transformer blocks (modulation and
    ``img_mlp.net.2`` kept in bf16, sglang's preset). Needs CUDA compute capability >= 8.9 and torchao; refused at start-up otherwise."""
    step_cache: bool = False
    """Lossy: diffusers' First-Block Cache on the transformer (skips the remaining blocks on steps
    where the first block's output barely changed)."""
    step_cache_threshold: float = Field(default=rules.DEFAULT_STEP_CACHE_THRESHOLD, gt=0, lt=1)
    """Relative L1 change below which ``STEP_CACHE`` reuses the cached blocks (higher: faster, worse).
    0.2 is the value of diffusers' own First-Block-Cache example on Qwen-Image."""

    # --- Output (docs/configuration.md#output) ----------------------------------------------------------
    output_format: OutputFormat = rules.DEFAULT_OUTPUT_FORMAT
    """Encoding of results whose request names none: ``png`` (lossless), ``webp`` or ``jpeg``."""
    output_quality: int = Field(
        default=rules.DEFAULT_OUTPUT_QUALITY, ge=rules.MIN_OUTPUT_QUALITY, le=rules.MAX_OUTPUT_QUALITY
    )
    """WebP and JPEG quality of results whose request names none (PNG ignores it)."""

    # --- Input limits -----------------------------------------------------------------------------
    max_image_bytes: int = Field(default=rules.MAX_IMAGE_BYTES, gt=0)
    """At most the ``edit-inputs`` bucket's ``file_size_limit``: the processor refuses to start otherwise."""
    max_image_pixels: int = Field(default=rules.MAX_IMAGE_PIXELS, gt=0)
    min_image_side: int = Field(default=rules.MIN_IMAGE_SIDE, gt=0)
    max_decode_seconds: float = Field(default=rules.MAX_DECODE_SECONDS, gt=0, le=3600)
    """CPU time one input image may take to decode; past it the decoding process is stopped and the
    image refused (``decode_too_slow``)."""

    # --- Worker -----------------------------------------------------------------------------------
    worker_id: str = Field(default_factory=_default_worker_id)
    lease_seconds: int = Field(default=120, ge=2)
    heartbeat_interval_seconds: float = Field(default=5.0, gt=0)
    progress_interval_seconds: float = Field(default=0.5, gt=0)
    """Least time between two progress writes (a heartbeat is also sent at least every interval)."""
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    preview_every_steps: int = Field(default=rules.DEFAULT_PREVIEW_EVERY_STEPS, ge=0, le=rules.MAX_STEPS)
    """A live preview after every this many denoising steps (docs/previews.md); 0 turns them off."""
    preview_interval_seconds: float = Field(default=rules.DEFAULT_PREVIEW_INTERVAL_SECONDS, ge=0)
    """Least time between two preview uploads of one job; newer previews replace one that waits."""
    worker_concurrency: int | None = Field(default=None, ge=1, le=16)
    """Edits on the model at once per process (GPU turns); unset: one per engine, i.e. per GPU (docs/worker.md)."""
    worker_prefetch: int = Field(default=1, ge=0, le=4)
    """Jobs claimed ahead, just in time, per edit about to end, so the next edit starts the moment the GPU
    frees (docs/worker.md#prefetch); 0: claim only when a GPU turn is free."""
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    storage_timeout_seconds: float = Field(default=rules.DEFAULT_STORAGE_TIMEOUT_SECONDS, gt=0)
    storage_retry_attempts: int = Field(default=rules.DEFAULT_STORAGE_ATTEMPTS, ge=1)

    # --- Completion webhooks (docs/webhooks.md) ------------------------------------------------------
    webhook_delivery: bool = True
    """Deliver completion webhooks from this process (``serve`` and ``worker``), beside the worker."""
    webhook_concurrency: int = Field(default=rules.DEFAULT_WEBHOOK_CONCURRENCY, ge=1, le=64)
    """Deliveries in flight at once per process."""
    webhook_timeout_seconds: float = Field(default=rules.DEFAULT_WEBHOOK_TIMEOUT_SECONDS, gt=0, le=60)
    """One attempt's deadline: resolving, connecting, sending and reading the answer."""
    webhook_lease_seconds: int = Field(default=rules.DEFAULT_WEBHOOK_LEASE_SECONDS, ge=5)
    """A claimed delivery is this process's for so long; after that (a killed process) it is sent again."""
    webhook_poll_interval_seconds: float = Field(default=rules.DEFAULT_WEBHOOK_POLL_SECONDS, gt=0)
    """How often due deliveries are looked for when there were none."""
    webhook_allowed_hosts: str | None = None
    """Comma-separated hosts (``*.example.com`` for names under it) this process delivers to, on top of
    the database's ``edit_webhook_allowed_hosts`` (a URL must pass both). Unset: the table alone."""
    webhook_allowed_ports: str = ",".join(
        str(port) for port in sorted(webhook_urls.WEBHOOK_DEFAULT_PORTS, reverse=True)
    )
    """Comma-separated ports a URL may name (its scheme's when it names none) for this process to deliver
    to, on top of the database's ``edit_webhook_settings.allowed_ports`` (a URL must pass both). ``*``:
    any port, for local development only (``edit-processor dev``; the database's ``allow_any_port``)."""
    webhook_allow_http: bool = False
    """Deliver to ``http://`` URLs (tests, private networks); the database's ``allow_http`` must agree."""
    webhook_allow_private_addresses: bool = False
    """Deliver to private, loopback and link-local addresses (tests); the database's setting must agree."""
    # --- Retention (docs/retention.md) ------------------------------------------------------------
    input_retention_hours: float = Field(
        default=rules.DEFAULT_INPUT_RETENTION_HOURS, ge=0, le=rules.MAX_RETENTION_HOURS
    )
    """Delete a finished request's input images this many hours after it finished; ``0``: keep forever."""
    output_retention_hours: float = Field(
        default=rules.DEFAULT_OUTPUT_RETENTION_HOURS, ge=0, le=rules.MAX_RETENTION_HOURS
    )
    """Delete a succeeded request's output this many hours after it finished; ``0``: keep forever."""
    orphan_grace_hours: float = Field(
        default=rules.DEFAULT_ORPHAN_GRACE_HOURS, ge=0, le=rules.MAX_RETENTION_HOURS
    )
    """Delete uploads in ``edit-inputs`` that no request names once this old; ``0``: never (else at least 1)."""
    retention_batch_size: int = Field(
        default=rules.DEFAULT_RETENTION_BATCH_SIZE, ge=1, le=rules.MAX_RETENTION_BATCH_SIZE
    )
    """Objects one retention batch deletes at most (Storage's bulk delete takes 1,000)."""
    retention_run_seconds: float = Field(
        default=rules.DEFAULT_RETENTION_RUN_SECONDS, ge=0, le=rules.MAX_RETENTION_RUN_SECONDS
    )
    """How long one run keeps taking batches while the last one deleted something; ``0``: one batch a run."""
    retention_interval_seconds: float = Field(
        default=rules.DEFAULT_RETENTION_INTERVAL_SECONDS, ge=rules.MIN_RETENTION_INTERVAL_SECONDS
    )
    """How often the processor runs retention (``edit-processor retention --once`` runs it from cron)."""

    # --- HTTP -------------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    worker_health_port: int | None = Field(default=None, ge=1, le=65535)
    """``edit-processor worker`` answers ``/healthz`` and ``/readyz`` (nothing else) on ``HOST`` and this
    port, for platform probes (Kubernetes); unset, the worker serves no HTTP."""
    cors_origins: str | None = None
    """Comma-separated origins (``https://app.example.com``) whose pages may call the REST API from a
    browser (CORS); ``*`` for any. Unset: none (a page served by the processor itself needs none)."""
    try_page: bool = True
    """Serve the page to try an edit at ``/try/`` (static files that use the public REST API and event
    streams only; docs/usage.md#the-try-page). ``false``: ``/try/`` answers 404."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("loras", mode="before")
    @classmethod
    def _lora_shorthand(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: {"source": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("loras")
    @classmethod
    def _lora_names(cls, value: dict[str, LoraSetting]) -> dict[str, LoraSetting]:
        bad = [name for name in value if not LORA_NAME.match(name)]
        if bad:
            raise ValueError(f"LoRA names must match {LORA_NAME.pattern}: {', '.join(bad)}")
        return value

    @field_validator("supabase_url", "comfyui_url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("database_url")
    @classmethod
    def _dsn_is_postgres(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _cpu_offload_means_offload(self) -> Settings:
        if self.cpu_offload and self.memory_mode == "full":
            self.memory_mode = "offload"
        return self

    @field_validator("orphan_grace_hours")
    @classmethod
    def _orphan_grace_not_too_short(cls, value: float) -> float:
        if 0 < value < rules.MIN_ORPHAN_GRACE_HOURS:
            raise ValueError(
                f"must be 0 (never delete orphans) or at least {rules.MIN_ORPHAN_GRACE_HOURS} hour: "
                "a shorter grace could delete an upload whose insert is merely slow"
            )
        return value

    @model_validator(mode="after")
    def _heartbeat_fits_lease(self) -> Settings:
        if self.heartbeat_interval_seconds * 3 > self.lease_seconds:
            raise ValueError(
                "heartbeat_interval_seconds must be at most a third of lease_seconds, "
                "so one lost heartbeat never loses the lease"
            )
        return self

    @model_validator(mode="after")
    def _webhook_lease_outlasts_an_attempt(self) -> Settings:
        if self.webhook_lease_seconds < 2 * self.webhook_timeout_seconds:
            raise ValueError(
                "webhook_lease_seconds must be at least twice webhook_timeout_seconds, "
                "so a delivery in flight is never sent again by another process"
            )
        return self

    @field_validator("webhook_allowed_ports")
    @classmethod
    def _ports_are_ports(cls, value: str) -> str:
        if value.strip() == "*":
            return "*"
        ports = [part.strip() for part in value.split(",") if part.strip()]
        if not ports or not all(port.isdigit() and 1 <= int(port) <= 65535 for port in ports):
            raise ValueError("must be a comma-separated list of ports from 1 to 65535, or *")
        return value

    def webhook_ports(self) -> frozenset[int] | None:
        """``WEBHOOK_ALLOWED_PORTS`` as a set; None for ``*`` (any port)."""
        if self.webhook_allowed_ports == "*":
            return None
        return frozenset(int(port) for port in self.webhook_allowed_ports.split(",") if port.strip())

    def webhook_hosts(self) -> frozenset[str] | None:
        """``WEBHOOK_ALLOWED_HOSTS`` as a set (lower case); None when unset."""
        if self.webhook_allowed_hosts is None:
            return None
        return frozenset(h.strip().lower() for h in self.webhook_allowed_hosts.split(",") if h.strip())

    def cors_origin_list(self) -> tuple[str, ...]:
        """``CORS_ORIGINS`` as a tuple, without trailing slashes (browsers send none)."""
        if self.cors_origins is None:
            return ()
        return tuple(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_origins(cls, value: str | None) -> str | None:
        for origin in (o.strip().rstrip("/") for o in (value or "").split(",") if o.strip()):
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], no path")
        return value

    def jwks_url(self) -> str | None:
        if self.supabase_jwks_url:
            return self.supabase_jwks_url
        return f"{self.supabase_url}/auth/v1/.well-known/jwks.json" if self.supabase_url else None

    def require(self, *names: str) -> None:
        """Raise ``ConfigurationError`` naming every listed setting that is unset."""
        missing = [name.upper() for name in names if getattr(self, name) is None]
        if missing:
            raise ConfigurationError(f"missing required setting(s): {', '.join(missing)}")


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning validation errors into one readable ``ConfigurationError``."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        # ``from None``: pydantic's own message echoes the rejected values, secrets included,
        # and a traceback would print it.
        raise ConfigurationError(f"invalid settings: {problems}") from None
    except SettingsError as exc:
        # A structured setting (LORAS) that is not JSON fails before validation, in pydantic-settings,
        # which says only which field; the JSON error says where (never the value: it may hold a secret).
        field = re.search(r'field "(\w+)"', str(exc))
        name = field[1].upper() if field else "settings"
        reason = exc.__cause__ if isinstance(exc.__cause__, ValueError) else exc
        raise ConfigurationError(f"invalid settings: {name}: not valid JSON ({reason})") from None
