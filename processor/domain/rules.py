"""The product's rules in one place: choices, limits and defaults every way in shares.

Every way in (a row inserted by an app, REST JSON and multipart, MCP, RunPod, the CLI and
``Editor.edit``) refuses the same requests with the same reason code. The Python side reads
these constants; SQL mirrors them with CHECK constraints (migration
``20261201000100_one_source_of_truth.sql``), and ``tests/test_rule_parity.py`` sends each
boundary value through every way in to prove both agree. ``docs/limits.md`` and
``docs/reason-codes.md`` are the user-facing tables; tests keep them equal to this module.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

MemoryMode = Literal["full", "offload", "quantized"]
"""How the diffusers engine uses GPU memory (``MEMORY_MODE``)."""
Quantization = Literal["nf4", "int8"]
"""Transformer weights with ``MEMORY_MODE=quantized`` (``QUANTIZATION``)."""
DeviceChoice = Literal["auto", "cuda", "cpu"]
"""Where the model runs (``DEVICE``): ``auto`` is CUDA when available."""

# --- Request parameters ---------------------------------------------------------------------------

MAX_IMAGES: Final = 3
"""Input images per request. The model card: "optimal performance is achieved with 1 to 3 input images"."""

MAX_BATCH_SIZE: Final = 50
"""Images in one batch (``edit_batches.input_paths``; each makes one request). The SQL check
``edit_batches_size`` has the same bound; a longer batch is ``too_many_images`` everywhere."""

MIN_STEPS: Final = 2
MAX_STEPS: Final = 100
"""One step is refused: with Qwen-Image's scheduler config (``shift_terminal``) it yields NaN sigmas."""
DEFAULT_STEPS: Final = 40

MAX_CFG_SCALE: Final = 20.0
"""``true_cfg_scale`` and ``guidance_scale`` are each from 0 to this (inclusive)."""
DEFAULT_TRUE_CFG_SCALE: Final = 4.0
DEFAULT_GUIDANCE_SCALE: Final = 1.0
DEFAULT_NEGATIVE_PROMPT: Final = " "

MAX_PROMPT_CHARS: Final = 2000
"""Characters in ``prompt`` and in ``negative_prompt``.

Why 2,000 (the engine said 4,000; SQL and REST said 2,000): QwenImageEditPlusPipeline truncates
nothing (``max_sequence_length`` is only checked to be at most 1024), so this limit is what keeps
the text part of the transformer's sequence, and its memory, bounded. 2,000 characters are about
500 tokens of English (byte-level BPE, about 4 characters a token), the 512 that Qwen-Image's
``max_sequence_length`` defaults to, and well under the 1024 the pipeline allows. It was already
the public contract (the schema and the REST API), so every stored row still satisfies it;
raising SQL to 4,000 instead would have loosened a promise to apps for no use the model card makes.
"""

PROMPT_WHITESPACE: Final = " \t\n\r\f\v"
"""A prompt of only these characters is blank, and refused. ASCII only, spelled out, so Python
and the schema's ``[^ \\t\\n\\r\\f\\v]`` agree exactly (Unicode whitespace classes differ by locale)."""

MAX_SEED: Final = 2**63 - 1
"""Seeds fit a Postgres ``bigint``; drawn seeds are below ``DRAWN_SEED_BOUND``. There is no
``-1`` meaning "random" (the row cannot hold it): leave the seed out (or null) to draw one."""
DRAWN_SEED_BOUND: Final = 2**31
"""Seeds the processor draws are below this, so every engine and client can hold them."""

Base = Literal["blank", "noise"]
"""What a request without input images starts from: a plain canvas, or seeded noise."""
BASES: Final[tuple[Base, ...]] = ("blank", "noise")
DEFAULT_BASE: Final[Base] = "blank"
HEX_COLOUR_PATTERN: Final = "^#[0-9A-Fa-f]{6}$"
"""``base_color`` of a ``blank`` canvas: ``#rrggbb`` (the same regex in SQL and the REST schema)."""
HEX_COLOUR: Final = re.compile(HEX_COLOUR_PATTERN)
DEFAULT_BASE_COLOR: Final = "#ffffff"

# --- Speed presets and per-request LoRAs (domain/speed.py checks them) -----------------------------

SpeedPreset = Literal["quality", "fast", "fastest"]
"""How many steps and which guidance an edit uses (``SPEED``, per request ``speed``)."""
SPEED_PRESETS: Final[tuple[SpeedPreset, ...]] = ("quality", "fast", "fastest")
LIGHTNING_STEPS: Final[Mapping[SpeedPreset, int]] = {"fast": 8, "fastest": 4}
"""Steps the Lightning LoRAs were distilled for."""
MAX_REQUEST_LORAS: Final = 3
"""LoRAs one request may name (the SQL check has the same bound)."""
MIN_LORA_SCALE: Final = -4.0
MAX_LORA_SCALE: Final = 4.0
LORA_NAME_PATTERN: Final = "^[a-z0-9][a-z0-9_.-]{0,63}$"
"""Allowlist names: lower-case, digits, ``_ . -``; at most 64 characters (SQL checks the same)."""
LORA_NAME: Final = re.compile(LORA_NAME_PATTERN)

# --- Output size ----------------------------------------------------------------------------------

SIZE_MULTIPLE: Final = 16
"""Output sides are multiples of this: VAE scale factor 8 × the transformer's 2×2 latent packing."""
MIN_OUTPUT_SIDE: Final = 32
MAX_OUTPUT_SIDE: Final = 4096
MAX_OUTPUT_PIXELS: Final = 4 * 1024 * 1024
"""Explicit sizes above 4 MP (four times the model's native area) are refused."""
CREATION_SIZE: Final = (1024, 1024)
"""Size of a creation (no input image) that names none: Qwen-Image-Edit-2509's native square."""

# --- Live previews (docs/previews.md) -------------------------------------------------------------

DEFAULT_PREVIEW_EVERY_STEPS: Final = 5
"""``PREVIEW_EVERY_STEPS``: a preview after every 5th step; never after the last (the output follows),
so 7 of the 40 ``quality`` steps get one, 1 of the 8 ``fast`` ones, none of the 4 ``fastest`` ones.
0 turns previews off; at most ``MAX_STEPS``."""
DEFAULT_PREVIEW_INTERVAL_SECONDS: Final = 1.0
"""``PREVIEW_INTERVAL_SECONDS``: least time between two preview uploads of one job; a preview that
comes sooner waits, and a newer one replaces it (previews are the latest picture, not a log)."""
PREVIEW_MAX_BYTES: Final = 2 * 1024 * 1024
"""A preview larger than this (an engine's, e.g. a ComfyUI preview method gone wrong) is dropped."""
PREVIEW_EXTENSIONS: Final[Mapping[str, str]] = {"image/webp": "webp", "image/jpeg": "jpg", "image/png": "png"}
"""Preview content types the processor uploads, and the extension of their object name."""


def preview_path_beside(output_path: str, extension: str) -> str:
    """Where a request's live preview lives: next to its output, ``{id}.png`` → ``{id}.preview.webp``
    (the worker writes it there; retention looks there for leftovers)."""
    return f"{output_path.rsplit('.', 1)[0]}.preview.{extension}"


# --- Input images ---------------------------------------------------------------------------------

MAX_IMAGE_BYTES: Final = 20 * 1024 * 1024
"""Default ``MAX_IMAGE_BYTES``; the ``edit-inputs`` bucket's ``file_size_limit`` must be at least
the setting (checked at start-up), or Storage refuses what the processor would accept."""
MAX_IMAGE_PIXELS: Final = 25_000_000
MIN_IMAGE_SIDE: Final = 32
MAX_OUTPUT_BYTES: Final = 256 * 1024 * 1024
"""The most the processor reads back of a result it wrote (REST ``wait=true``, MCP)."""

# --- Storage, channels, statuses ------------------------------------------------------------------

INPUT_BUCKET: Final = "edit-inputs"
OUTPUT_BUCKET: Final = "edit-outputs"

QUEUED_CHANNEL: Final = "edit_requests"
"""``NOTIFY`` channel: a request may be claimable (payload: its id)."""
CANCEL_CHANNEL: Final = "edit_requests_cancel"
"""``NOTIFY`` channel: a processing request was canceled (payload: its id)."""

Status = Literal["awaiting_image", "queued", "processing", "succeeded", "failed", "canceled"]
STATUSES: Final[tuple[Status, ...]] = (
    "awaiting_image",
    "queued",
    "processing",
    "succeeded",
    "failed",
    "canceled",
)
TERMINAL: Final[frozenset[Status]] = frozenset({"succeeded", "failed", "canceled"})
"""Statuses a request never leaves on its own (operators may ``retry_edit_request``)."""

# --- Reason codes ---------------------------------------------------------------------------------


class ReasonCode(StrEnum):
    """Every reason code the processor, its ways in and its SQL can give.

    Written to ``edit_requests.error_code`` (a CHECK constraint holds it to these), returned
    as ``error.code`` by the REST API, ``error_code`` by RunPod and the prefix of MCP tool
    errors and CLI messages. ``REASONS`` describes each; ``docs/reason-codes.md`` lists them.
    """

    # The request itself (never retried)
    INVALID_INPUT = "invalid_input"
    INVALID_REQUEST = "invalid_request"
    INVALID_PARAMETER = "invalid_parameter"
    INVALID_PROMPT = "invalid_prompt"
    INVALID_SIZE = "invalid_size"
    INVALID_BASE64 = "invalid_base64"
    INVALID_JSON = "invalid_json"
    INVALID_MULTIPART = "invalid_multipart"
    TOO_MANY_IMAGES = "too_many_images"
    EMPTY_IMAGE = "empty_image"
    TRUNCATED_IMAGE = "truncated_image"
    UNKNOWN_FORMAT = "unknown_format"
    TOO_MANY_BYTES = "too_many_bytes"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_SMALL = "too_small"
    ANIMATED_IMAGE = "animated_image"
    TOO_MANY_SCANS = "too_many_scans"
    DECODE_TOO_SLOW = "decode_too_slow"
    CORRUPT_IMAGE = "corrupt_image"
    MISSING_OBJECT = "missing_object"
    INPUT_NEVER_ARRIVED = "input_never_arrived"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    ALREADY_FINISHED = "already_finished"
    BODY_TOO_LARGE = "body_too_large"
    TOO_MANY_WAITS = "too_many_waits"
    LIMIT_EXCEEDED = "limit_exceeded"
    QUOTA_EXCEEDED = "quota_exceeded"
    # Faults outside the request (retried)
    TRANSIENT_ERROR = "transient_error"
    DATABASE_UNAVAILABLE = "database_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    COMFYUI_UNAVAILABLE = "comfyui_unavailable"
    COMFYUI_INTERRUPTED = "comfyui_interrupted"
    LEASE_EXPIRED = "lease_expired"
    # The model or the workflow
    MODEL_ERROR = "model_error"
    OUT_OF_MEMORY = "out_of_memory"
    NAN_OUTPUT = "nan_output"
    WORKFLOW_ERROR = "workflow_error"
    COMFYUI_NODE_ERROR = "comfyui_node_error"
    COMFYUI_INVALID_WORKFLOW = "comfyui_invalid_workflow"
    # Everything else
    STORAGE_REJECTED = "storage_rejected"
    CANCELED = "canceled"
    UNKNOWN_LORA = "unknown_lora"
    SPEED_UNAVAILABLE = "speed_unavailable"
    LORA_UNAVAILABLE = "lora_unavailable"
    CONFIGURATION_ERROR = "configuration_error"
    SETUP_FAILED = "setup_failed"
    INTERNAL_ERROR = "internal_error"
    ERROR = "error"

    @property
    def description(self) -> str:
        return REASONS[self].description

    @property
    def retryable(self) -> bool | None:
        return REASONS[self].retryable


@dataclass(frozen=True, slots=True)
class Reason:
    description: str
    retryable: bool | None
    """Whether the processor retries a request that failed so; ``None`` where the code never
    fails a row (HTTP answers) or where the raiser decides."""


REASONS: Final[Mapping[ReasonCode, Reason]] = {
    ReasonCode.INVALID_INPUT: Reason("The request is bad in a way no narrower code names.", False),
    ReasonCode.INVALID_REQUEST: Reason(
        "The body or job input has the wrong shape (not an object, a bad edit id).", False
    ),
    ReasonCode.INVALID_PARAMETER: Reason(
        "A parameter is out of range or of the wrong type (steps, CFG scales, seed, base, base_color).",
        False,
    ),
    ReasonCode.INVALID_PROMPT: Reason(
        "The prompt is blank, or a prompt is longer than the limit or holds a NUL character.", False
    ),
    ReasonCode.INVALID_SIZE: Reason(
        "The output size breaks the size rule, or an input's aspect ratio is too extreme.", False
    ),
    ReasonCode.INVALID_BASE64: Reason("An image is not valid base64 (or a malformed data: URL).", False),
    ReasonCode.INVALID_JSON: Reason("The REST body is not valid JSON.", None),
    ReasonCode.INVALID_MULTIPART: Reason("The REST multipart body is malformed.", None),
    ReasonCode.TOO_MANY_IMAGES: Reason("More input images than the model takes.", False),
    ReasonCode.EMPTY_IMAGE: Reason("An input image has 0 bytes.", False),
    ReasonCode.TRUNCATED_IMAGE: Reason("An input image is cut short or corrupt.", False),
    ReasonCode.UNKNOWN_FORMAT: Reason("An input is not PNG, JPEG or WebP.", False),
    ReasonCode.TOO_MANY_BYTES: Reason("An input image is larger than MAX_IMAGE_BYTES.", False),
    ReasonCode.TOO_MANY_PIXELS: Reason("An input image has more pixels than MAX_IMAGE_PIXELS.", False),
    ReasonCode.TOO_SMALL: Reason("An input image has a side shorter than MIN_IMAGE_SIDE.", False),
    ReasonCode.ANIMATED_IMAGE: Reason("An input image is animated.", False),
    ReasonCode.TOO_MANY_SCANS: Reason(
        "A progressive JPEG has more scans (or scans × pixels) than any real photo needs to decode.", False
    ),
    ReasonCode.DECODE_TOO_SLOW: Reason(
        "Decoding an input image took more CPU time than MAX_DECODE_SECONDS allows.", False
    ),
    ReasonCode.CORRUPT_IMAGE: Reason(
        "An input image makes the decoder fail in a way no narrower code names.", False
    ),
    ReasonCode.MISSING_OBJECT: Reason("An input object named by the request is not in Storage.", False),
    ReasonCode.INPUT_NEVER_ARRIVED: Reason(
        "The request waited longer than awaiting_image_ttl for its input images (SQL sweep).", False
    ),
    ReasonCode.UNAUTHORIZED: Reason("Missing, invalid or expired user token.", None),
    ReasonCode.NOT_FOUND: Reason("No such request for this user.", None),
    ReasonCode.ALREADY_FINISHED: Reason("The request finished before it could be canceled.", None),
    ReasonCode.BODY_TOO_LARGE: Reason(
        "The HTTP body is larger than three images at the byte limit need.", None
    ),
    ReasonCode.TOO_MANY_WAITS: Reason(
        "The user already holds as many waits and event streams as allowed.", None
    ),
    ReasonCode.LIMIT_EXCEEDED: Reason("The caller is over a limit no narrower code names.", None),
    ReasonCode.QUOTA_EXCEEDED: Reason(
        "The user has as many requests in flight, or in the last hour, or as much cost as edit_user_limits allows.",
        None,
    ),
    ReasonCode.TRANSIENT_ERROR: Reason("A fault outside the request that may pass.", True),
    ReasonCode.DATABASE_UNAVAILABLE: Reason("The database did not answer.", True),
    ReasonCode.STORAGE_UNAVAILABLE: Reason("Storage did not answer or failed (5xx, timeouts).", True),
    ReasonCode.COMFYUI_UNAVAILABLE: Reason("ComfyUI did not answer, or its websocket went quiet.", True),
    ReasonCode.COMFYUI_INTERRUPTED: Reason("ComfyUI interrupted the run without our asking.", True),
    ReasonCode.LEASE_EXPIRED: Reason(
        "The worker stopped answering; requeued, or failed on the last attempt (SQL sweep).", True
    ),
    ReasonCode.MODEL_ERROR: Reason("The model failed on this request.", True),
    ReasonCode.OUT_OF_MEMORY: Reason("The GPU ran out of memory for this request.", True),
    ReasonCode.NAN_OUTPUT: Reason("The model produced NaN or infinite values.", True),
    ReasonCode.WORKFLOW_ERROR: Reason("An external engine's workflow failed.", False),
    ReasonCode.COMFYUI_NODE_ERROR: Reason("A ComfyUI node raised, or the workflow produced no image.", False),
    ReasonCode.COMFYUI_INVALID_WORKFLOW: Reason("ComfyUI refused the workflow or an upload.", False),
    ReasonCode.STORAGE_REJECTED: Reason("Storage refused an upload or download (4xx).", False),
    ReasonCode.CANCELED: Reason("The request was canceled (cancel_edit_request or DELETE).", False),
    ReasonCode.UNKNOWN_LORA: Reason("A LoRA the request names is not on the operator's allowlist.", False),
    ReasonCode.SPEED_UNAVAILABLE: Reason(
        "This deployment cannot run the speed preset or LoRAs asked for (engine or settings).", False
    ),
    ReasonCode.LORA_UNAVAILABLE: Reason(
        "An allowlisted LoRA could not be loaded (a fault of the deployment).", True
    ),
    ReasonCode.CONFIGURATION_ERROR: Reason("A setting is missing or malformed.", False),
    ReasonCode.SETUP_FAILED: Reason("The processor could not start working: the model did not load.", None),
    ReasonCode.INTERNAL_ERROR: Reason("An unexpected error in the processor (a bug).", False),
    ReasonCode.ERROR: Reason(
        "Written by fail_edit_request when its caller gave no code (older callers, operators).", None
    ),
}

QUOTA_SQLSTATE: Final = "PT429"
"""What the insert trigger raises past a per-user limit (edit_user_limits); PostgREST answers 429."""

CONSTRAINT_REASONS: Final[Mapping[str, ReasonCode]] = {
    "edit_requests_prompt_length": ReasonCode.INVALID_PROMPT,
    "edit_requests_prompt_not_blank": ReasonCode.INVALID_PROMPT,
    "edit_requests_negative_prompt_length": ReasonCode.INVALID_PROMPT,
    "edit_requests_input_count": ReasonCode.TOO_MANY_IMAGES,
    "edit_requests_size_valid": ReasonCode.INVALID_SIZE,
    "edit_requests_inputs_or_size": ReasonCode.INVALID_SIZE,
    "edit_requests_loras_allowed": ReasonCode.UNKNOWN_LORA,
    "edit_batches_not_empty": ReasonCode.INVALID_INPUT,
    "edit_batches_size": ReasonCode.TOO_MANY_IMAGES,
}
"""What a CHECK violation on an insert means; any other constraint is ``invalid_parameter``."""


def reason_for_constraint(name: str | None) -> ReasonCode:
    """The reason code of an insert the schema refused with CHECK constraint ``name``."""
    return CONSTRAINT_REASONS.get(name or "", ReasonCode.INVALID_PARAMETER)


# --- Untrusted bytes, waits and bodies -----------------------------------------------------------

WEBHOOK_MAX_BODY_BYTES = 256 * 1024
"""A database webhook carries one row (and its old version on UPDATE): a few KB, 256 KiB at most."""

JPEG_MAX_SCANS = 100
"""Scans a progressive JPEG may have. Encoders write 10 (libjpeg's simple progression) to a few dozen;
each scan re-walks every coefficient, so thousands of tiny scans turn 0.4 MB into minutes of decoding."""
JPEG_MAX_PIXEL_SCANS = 25_000_000 * 12
"""Decode work bound: scans × pixels. A 25 MP photo with the usual 10 scans passes; measured here at
about 23 ms per megapixel-scan, this caps a decode at roughly 7 s of one core."""

MAX_DECODE_SECONDS: Final = 5.0
"""Default ``MAX_DECODE_SECONDS``: the CPU time one input image may take to decode (in a process the
kernel stops at that point, ``RLIMIT_CPU``; whole seconds, rounded up). The slowest real inputs
measured, a 25 MP progressive JPEG and a 25 MP PNG, take 0.66 s and 0.35 s (docs/limits.md)."""
DECODE_WALL_FACTOR: Final = 4
DECODE_WALL_EXTRA_SECONDS: Final = 30.0
"""A decode also ends after ``DECODE_WALL_FACTOR × MAX_DECODE_SECONDS + DECODE_WALL_EXTRA_SECONDS``
of wall time (20 + 30 = 50 s by default): a machine that gives the decoder so little CPU is the
fault, not the image (``transient_error``, retried)."""
DECODE_PROCESSES = 2
"""Processes that decode the worker's inputs (and RunPod's, and the CLI's) in one process."""

VALIDATION_THREADS = 2
"""Uploads validated at once per process (each in a decoding process of its own pool); more wait their
turn instead of taking the processes the worker decodes in."""

CHANGES_CHANNEL = "edit_request_changes"
"""NOTIFY channel: a request's client-visible state changed (payload: its id)."""
WAIT_MAX_SECONDS = 600
"""Longest a caller may wait for one request (REST ``wait=true``, the MCP tool)."""
STREAM_MAX_SECONDS = 900
"""Longest one event stream stays open; SSE clients reconnect and carry on."""
WAITS_PER_USER = 4
"""Waits and event streams one user may hold open at once in one process."""
CHANGES_FALLBACK_SECONDS = 5.0
"""Waits re-read the row at least this often, in case a notification was lost (a reconnect)."""
WATCH_RENEW_SECONDS = 60
"""A listening process renews its ``edit_request_watches`` rows this often while it waits on them."""
WATCH_SECONDS = 3 * WATCH_RENEW_SECONDS
"""A watch lasts this long unrenewed: what a process that died leaves stops costing NOTIFYs then."""

EDIT_BODY_FIELDS_BYTES = 64 * 1024
"""What ``POST /v1/edits`` may carry besides its images (prompts and parameters, as JSON or form fields)."""
MULTIPART_MAX_FIELDS = 32
"""Form fields parsed from one multipart body before it is refused (Starlette's default is 1,000)."""


def edit_body_bytes(max_images: int, max_image_bytes: int) -> int:
    """The largest ``POST /v1/edits`` body: every image at the byte limit, base64-encoded (4/3, the
    larger of JSON's and multipart's encodings), plus the fields."""
    return max_images * (4 * -(-max_image_bytes // 3) + 1024) + EDIT_BODY_FIELDS_BYTES


# --- Completion webhooks (docs/webhooks.md; SQL mirrors these in 20261201000800) ------------------

WebhookEvent = Literal["succeeded", "failed", "canceled"]
"""The final statuses an endpoint may subscribe to; the payload's ``type`` is ``edit_request.<event>``."""
WEBHOOK_EVENTS: Final[tuple[WebhookEvent, ...]] = ("succeeded", "failed", "canceled")
WEBHOOK_MAX_ATTEMPTS: Final = 12
"""Attempts of one delivery before it is dead (``edit_webhook_max_attempts()``). With the back-off
below the last one is about 7 h 15 min after the first (±20 %), so a receiver down through a
long deploy or an outage of a few hours still gets every event."""
WEBHOOK_BACKOFF_BASE_SECONDS: Final = 15
WEBHOOK_BACKOFF_MAX_SECONDS: Final = 3 * 3600
WEBHOOK_BACKOFF_JITTER: Final = 0.2
"""Each wait is the nominal one times a factor drawn from ``1 ± WEBHOOK_BACKOFF_JITTER``."""
WEBHOOK_MAX_ENDPOINTS_PER_USER: Final = 10
"""Endpoints one user may register (operators are exempt; ``edit_webhook_max_endpoints()``)."""
WEBHOOK_MAX_URL_CHARS: Final = 2048
WEBHOOK_MAX_RESPONSE_BYTES: Final = 64 * 1024
"""What is read of a receiver's answer before the connection is closed (only the status matters)."""
WEBHOOK_URL_PATTERN: Final = (
    r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::([0-9]{1,5}))?(?:[/?#][!-~]*)?$"
)
"""The only URL shape accepted (the same regex as ``edit_webhook_url_host``): no user info, ASCII."""
WEBHOOK_URL: Final = re.compile(WEBHOOK_URL_PATTERN)


def webhook_backoff_seconds(attempts: int) -> float:
    """The nominal wait after ``attempts`` attempts (before jitter): 15 s, 30 s, 60 s … at most 3 h."""
    return float(min(WEBHOOK_BACKOFF_MAX_SECONDS, WEBHOOK_BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0)))


class WebhookFailure(StrEnum):
    """Why an attempt failed: the prefix of ``edit_webhook_deliveries.last_error`` (``kind: detail``)."""

    HTTP_STATUS = "http_status"
    """The receiver answered, but not 2xx (3xx included: redirects are never followed)."""
    TIMEOUT = "timeout"
    CONNECT_FAILED = "connect_failed"
    DNS_FAILED = "dns_failed"
    MALFORMED = "malformed"
    NOT_HTTPS = "not_https"
    HOST_NOT_ALLOWED = "host_not_allowed"
    PRIVATE_ADDRESS = "private_address"
    LEASE_EXPIRED = "lease_expired"


WEBHOOK_PERMANENT_FAILURES: Final = frozenset(
    {
        WebhookFailure.MALFORMED,
        WebhookFailure.NOT_HTTPS,
        WebhookFailure.HOST_NOT_ALLOWED,
        WebhookFailure.PRIVATE_ADDRESS,
    }
)
"""Refusals of the URL itself: retrying cannot help, so the delivery is dead at once (replayable)."""


def webhook_host_allowed(host: str, allowed: frozenset[str]) -> bool:
    """``host`` (lower case, IPv6 without brackets) is on ``allowed``: equal, or under a ``*.`` entry."""
    return host in allowed or any(
        entry.startswith("*.") and host.endswith(entry[1:]) and len(host) > len(entry) - 1
        for entry in allowed
    )


WEBHOOK_PRIVATE_NETWORKS: Final = tuple(
    ipaddress.ip_network(network)
    for network in (
        # Not public: private, shared (CGNAT), loopback, link-local (cloud metadata 169.254.169.254,
        # fd00:ec2::254), unspecified, multicast, reserved, documentation, and IPv4 inside IPv6
        # (mapped, NAT64, 6to4), whose v4 part could be any of these. edit_webhook_address_private
        # lists the same networks.
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/127", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32",
        "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8",
    )
)  # fmt: skip


def webhook_address_private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address webhooks never reach unless the operator allows private addresses."""
    return any(
        address in network for network in WEBHOOK_PRIVATE_NETWORKS if network.version == address.version
    )


def webhook_host_private(host: str) -> bool:
    """``localhost`` (and names under it), or an address literal that is private (SQL's rule)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    if not re.fullmatch(r"[0-9.]+", host) and ":" not in host:
        return False
    try:
        return webhook_address_private(ipaddress.ip_address(host))
    except ValueError:
        return True  # looks like an address, but is none: never trusted


def webhook_url_host(url: str) -> str | None:
    """The host of an acceptable URL (lower case, IPv6 without brackets); None when malformed."""
    match = WEBHOOK_URL.match(url) if len(url) <= WEBHOOK_MAX_URL_CHARS else None
    if match is None or (match.group(2) is not None and not 1 <= int(match.group(2)) <= 65535):
        return None
    return match.group(1).strip("[]").lower()


def webhook_url_refusal(
    url: str, *, allowed_hosts: frozenset[str], allow_http: bool, allow_private_addresses: bool
) -> tuple[WebhookFailure, str] | None:
    """Why a webhook URL is refused, or None: ``edit_webhook_url_refusal`` in SQL gives the same verdict
    (with the allowlist table and ``edit_webhook_settings`` for the arguments)."""
    host = webhook_url_host(url)
    if host is None:
        return (
            WebhookFailure.MALFORMED,
            "scheme://host[:port]/path, no user info, ASCII, at most 2048 characters",
        )
    if not url.startswith("https://") and not allow_http:
        return WebhookFailure.NOT_HTTPS, "only https:// URLs are accepted"
    if not webhook_host_allowed(host, allowed_hosts):
        return WebhookFailure.HOST_NOT_ALLOWED, f"{host} is not on the operator's allowlist"
    if webhook_host_private(host) and not allow_private_addresses:
        return WebhookFailure.PRIVATE_ADDRESS, f"{host} is a private, loopback or link-local address"
    return None


# --- Retention (docs/retention.md; SQL: edit_retention_candidates checks the same bounds) ---------

DEFAULT_INPUT_RETENTION_HOURS: Final = 7 * 24
"""Input images of a finished request are deleted this long after it finished (``0``: kept forever).
A week leaves time to retry a failed request (``retry_edit_request`` needs its inputs) and to look
into complaints, without keeping users' uploads indefinitely."""
DEFAULT_OUTPUT_RETENTION_HOURS: Final = 30 * 24
"""Outputs are deleted this long after their request succeeded (``0``: kept forever): a month for
apps to copy the results they keep; the row and its ``output_path`` stay as history."""
DEFAULT_ORPHAN_GRACE_HOURS: Final = 24
"""Uploads no request names are deleted once this old (``0``: never). As long as
``awaiting_image_ttl`` (24 h), so an upload waits for its insert as long as an insert waits for it."""
MIN_ORPHAN_GRACE_HOURS: Final = 1
"""A shorter grace could delete an upload whose insert is merely slow (a client uploading three images)."""
MAX_RETENTION_HOURS: Final = 10 * 365 * 24
DEFAULT_RETENTION_BATCH_SIZE: Final = 500
"""Objects one retention run deletes at most; the next run carries on."""
MAX_RETENTION_BATCH_SIZE: Final = 1000
"""Supabase Storage deletes at most 1,000 objects per bulk request (``MAX_OBJECTS_PER_REQUEST``)."""
STORAGE_DELETE_MAX_OBJECTS: Final = 1000
"""Names per ``DELETE /object/{bucket}`` call: the real server's cap where hard limits are on."""
DEFAULT_RETENTION_INTERVAL_SECONDS: Final = 3600
MIN_RETENTION_INTERVAL_SECONDS: Final = 60
RETENTION_LEASE_SECONDS: Final = 600
"""How long one run holds the retention lease (another processor takes over after it lapses)."""
RetentionKind = Literal["input", "output", "orphan"]
"""What a retention candidate is: an input or output of a finished request, or an orphan upload."""
