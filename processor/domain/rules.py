"""The product's rules in one place: choices, limits and defaults every way in shares.

Every way in (a row inserted by an app, REST JSON and multipart, MCP, RunPod, the CLI and
``Editor.edit``) refuses the same requests with the same reason code. The Python side reads
these constants; SQL mirrors them with CHECK constraints (migration
``20261201000100_one_source_of_truth.sql``), and ``tests/test_rule_parity.py`` sends each
boundary value through every way in to prove both agree. ``docs/limits.md`` is the user-facing
table; a test keeps it equal to this module. The reason codes are in ``reasons``, the webhook URL
policy in ``webhook_urls``, and the request's fields are declared once in ``request``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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

IDEMPOTENCY_KEY_MAX_CHARS: Final = 255
"""Characters of an idempotency key (``Idempotency-Key``; Stripe's bound), visible ASCII only
(``IDEMPOTENCY_KEY_PATTERN``). The SQL check ``edit_requests_idempotency_key_valid`` holds the same."""
IDEMPOTENCY_KEY_PATTERN: Final = "^[\\x21-\\x7E]+$"
"""Visible ASCII, no spaces (ECMA-262 and SQL ``~``): a UUID, or any token a client makes."""

MIN_STEPS: Final = 2
MAX_STEPS: Final = 100
"""One step is refused: with Qwen-Image's scheduler config (``shift_terminal``) it yields NaN sigmas."""
DEFAULT_STEPS: Final = 40

MAX_CFG_SCALE: Final = 20.0
"""``true_cfg_scale`` and ``guidance_scale`` are each from 0 to this (inclusive)."""
DEFAULT_TRUE_CFG_SCALE: Final = 4.0
DEFAULT_GUIDANCE_SCALE: Final = 1.0
DEFAULT_NEGATIVE_PROMPT: Final = " "

MAX_PROMPT_BYTES: Final = 2000
"""UTF-8 bytes of the NFC form of ``prompt``, and of ``negative_prompt``: what bounds their tokens.

QwenImageEditPlusPipeline truncates nothing (``max_sequence_length`` is only checked to be at most
1024), so this limit is what keeps the text part of the transformer's sequence, and its memory and
work, bounded. The tokenizer (Qwen2's byte-level BPE) normalizes to NFC and gives at most one token
per byte of what it then sees, so the bytes of the NFC form bound the tokens whatever the script:
2,000 of them are at most 2,000 tokens, and about 460 of English or of common Chinese (0.23 tokens a
byte for both, measured with the Qwen tokenizer). A bound in characters (2,000 until issue 22) let
rare characters through at up to five tokens each: 2,000 of U+FB2C were 10,000 tokens, 2,000 from
CJK extension B 6,066 (docs/limits.md). The charge counts the same bytes (``domain.cost``).
"""
MAX_PROMPT_CHARS: Final = MAX_PROMPT_BYTES
"""Characters in ``prompt`` and ``negative_prompt``: implied by ``MAX_PROMPT_BYTES`` (a character is at
least one byte); JSON Schema's ``maxLength``, which cannot count bytes."""

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
"""Scales a request or the operator may give a LoRA (the SQL check has the same bounds)."""
DEFAULT_LORA_SCALE: Final = 1.0
"""The scale of an allowlisted LoRA the operator gave none (``LORAS``)."""
DEFAULT_LORA_CACHE_SIZE: Final = 4
"""``LORA_CACHE_SIZE``: request LoRAs kept loaded at once; also the most one request may use."""
MAX_LORA_CACHE_SIZE: Final = 32
LORA_NAME_PATTERN: Final = "^[a-z0-9][a-z0-9_.-]{0,63}$"
"""Allowlist names: lower-case, digits, ``_ . -``; at most 64 characters (SQL checks the same)."""
LORA_NAME: Final = re.compile(LORA_NAME_PATTERN)

# --- What a request is charged (domain/cost.py; SQL: edit_request_cost; docs/fair-sharing.md) ------
# The transformer's work per denoising step, from QwenImageEditPlusPipeline (diffusers
# src/diffusers/pipelines/qwenimage/pipeline_qwenimage_edit_plus.py): every input image is resized to
# VAE_IMAGE_SIZE = 1024 * 1024 for the VAE (its latents join every forward) and to
# CONDITION_IMAGE_SIZE = 384 * 384 for Qwen2.5-VL (its vision tokens join the text stream), whatever
# its size or the output's. Counted with torch's FlopCounterMode over the real architecture
# (benchmarks/edit_cost.py), the formula below is within 0.3 % of the transformer's FLOPs.

COST_PIXELS_PER_TOKEN: Final = 256
"""Image pixels per transformer token: the VAE's 8x downsampling, then 2x2 latent packing (16 x 16)."""
COST_DEFAULT_OUTPUT_PIXELS: Final = 1024 * 1024
"""The output area charged when a request names no size: the model's rule (about 1 MP at the last
input's aspect ratio; a creation's 1024 x 1024)."""
COST_INPUT_TOKENS: Final = 1024 * 1024 // COST_PIXELS_PER_TOKEN + 196
"""Tokens one input image adds to every forward: 4,096 latent tokens at the 1024² VAE area and 196
vision tokens at the 384² condition area (392 x 392 after Qwen2-VL's 28-pixel rounding, 2x2 merged)."""
COST_ATTENTION_TOKENS: Final = 6 * 3072
"""The sequence length at which joint attention costs as much per token as the linear layers: per
block and token, attention does 2 x 3,072 x tokens multiply-adds, the linear layers 12 x 3,072² (q, k,
v, out and a 4x MLP at width 3,072). A forward over T tokens does work T x (1 + T / this)."""
COST_LORA_FORWARD_SHARE: Final = 1 / 16
"""Work an active, unfused LoRA adapter (a request's, or a Lightning preset's) adds to each forward: a
rank-128 adapter on every linear layer adds 6.2 % of their multiply-adds (rank 64: 3.1 %)."""
COST_LORA_LOAD: Final = 4.0
"""Charged per LoRA a request names, whatever the adapter cache holds (an insert cannot know): about
the GPU time of loading one from disk when it is not resident (seconds: diffusers' load_lora_weights,
siliconflow/onediff#465), in default steps (one is about 0.9 s on an H100). Alternating more LoRAs
than LORA_CACHE_SIZE keeps makes every edit a load (decision 0070)."""

# --- Output size ----------------------------------------------------------------------------------

SIZE_MULTIPLE: Final = 16
"""Output sides are multiples of this: VAE scale factor 8 × the transformer's 2×2 latent packing."""
MIN_OUTPUT_SIDE: Final = 32
MAX_OUTPUT_SIDE: Final = 4096
MAX_OUTPUT_PIXELS: Final = 4 * 1024 * 1024
"""Explicit sizes above 4 MP (four times the model's native area) are refused."""
CREATION_SIZE: Final = (1024, 1024)
"""Size of a creation (no input image) that names none: Qwen-Image-Edit-2509's native square."""

# --- Output encoding (docs/decisions/0080-output-formats.md) ---------------------------------------

OutputFormat = Literal["png", "webp", "jpeg"]
"""How a result is encoded (``output_format``; the deployment's ``OUTPUT_FORMAT`` when a request names none)."""
OUTPUT_FORMATS: Final[tuple[OutputFormat, ...]] = ("png", "webp", "jpeg")
DEFAULT_OUTPUT_FORMAT: Final[OutputFormat] = "png"
OUTPUT_EXTENSIONS: Final[Mapping[OutputFormat, str]] = {"png": "png", "webp": "webp", "jpeg": "jpg"}
"""The output object's extension: ``{id}.png``, ``{id}.webp``, ``{id}.jpg``."""
OUTPUT_MEDIA_TYPES: Final[Mapping[OutputFormat, str]] = {
    "png": "image/png",
    "webp": "image/webp",
    "jpeg": "image/jpeg",
}
"""The output object's content type (the ``edit-outputs`` bucket must allow each)."""
MIN_OUTPUT_QUALITY: Final = 1
MAX_OUTPUT_QUALITY: Final = 100
"""``output_quality`` of WebP and JPEG (libwebp's and libjpeg's own 1-100 scales); PNG is lossless and
ignores it. The SQL check has the same bounds."""
DEFAULT_OUTPUT_QUALITY: Final = 90
"""``OUTPUT_QUALITY``: for requests that name none (measured in benchmarks/output_encoding.py)."""
PNG_COMPRESS_LEVEL: Final = 1
"""zlib level of PNG outputs: level 1 encodes a 1 MP picture in half the time of Pillow's default 6
for about 10 % more bytes; 9 is no smaller than 6 (benchmarks/output_encoding.py, decision 0080)."""
WEBP_METHOD: Final = 2
"""libwebp's effort (0 fastest to 6 smallest): 2 takes about half the time of libwebp's default 4 for
1.5 % more bytes at the same fidelity; below it each millisecond saved costs twice the bytes (decision 0080)."""


def output_format_of(output_path: str) -> OutputFormat:
    """The format of an output object, by its name's extension (outputs written before formats were
    chosen are all ``.png``)."""
    extension = output_path.rsplit(".", 1)[-1].lower()
    return next((fmt for fmt, known in OUTPUT_EXTENSIONS.items() if known == extension), "png")


def output_names_beside(output_path: str) -> list[str]:
    """Every name an output of the same request may have had (``{id}.png``, ``{id}.webp``, ``{id}.jpg``):
    an attempt that uploaded under another format and then lost its row leaves one (retention
    deletes them with the output)."""
    stem = output_path.rsplit(".", 1)[0]
    return [
        f"{stem}.{extension}"
        for extension in OUTPUT_EXTENSIONS.values()
        if f"{stem}.{extension}" != output_path
    ]


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
    """Where a request's live preview lives: next to its output, whatever the output's format:
    ``{id}.png``, ``{id}.webp`` or ``{id}.jpg`` → ``{id}.preview.webp`` (the worker writes it there;
    retention looks there for leftovers)."""
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

DEFAULT_STORAGE_TIMEOUT_SECONDS: Final = 60.0
"""``STORAGE_TIMEOUT_SECONDS``: one Storage call's deadline."""
DEFAULT_STORAGE_ATTEMPTS: Final = 4
"""``STORAGE_RETRY_ATTEMPTS``: tries of one Storage call through transient faults."""
DEFAULT_COMFYUI_TIMEOUT_SECONDS: Final = 30.0
"""``COMFYUI_TIMEOUT_SECONDS``: one HTTP call to ComfyUI (a run may take longer)."""
DEFAULT_STEP_CACHE_THRESHOLD: Final = 0.2
"""``STEP_CACHE_THRESHOLD``: diffusers' own First-Block-Cache example on Qwen-Image uses 0.2."""

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
DEFAULT_MAX_ATTEMPTS: Final = 3
"""``edit_requests.max_attempts``' default: attempts before a retryable failure is final."""
REQUEST_BACKOFF_BASE_SECONDS: Final = 10
REQUEST_BACKOFF_MAX_SECONDS: Final = 600
REQUEST_BACKOFF_JITTER: Final = 0.25
"""A retried request waits the nominal back-off times a factor drawn from ``1 ± REQUEST_BACKOFF_JITTER``
(``edit_request_backoff()`` in SQL; ``tests/test_port_job_queue.py`` compares them)."""


def request_backoff_seconds(attempts: int) -> float:
    """The nominal wait before a request's next attempt after ``attempts`` attempts (before jitter):
    10 s, 20 s, 40 s … at most 10 minutes."""
    return float(min(REQUEST_BACKOFF_MAX_SECONDS, REQUEST_BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0)))


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
DECODE_STALL_SECONDS: Final = 30.0
"""A decode whose process has used no CPU time (and moved no byte) for this long is killed as
``transient_error`` (retried): a hung decoder, or a machine that gives it no CPU at all. One that keeps
computing is stopped only at ``MAX_DECODE_SECONDS`` of CPU time however loaded the machine is, so an
image's verdict (``decode_too_slow`` or not) never depends on the load."""
DECODE_PROCESSES = 2
"""Processes that decode the worker's inputs (and RunPod's, and the CLI's) in one process."""

VALIDATION_THREADS = 2
"""Uploads validated at once per process (each in a decoding process of its own pool); more wait their
turn instead of taking the processes the worker decodes in."""
VALIDATIONS_PER_USER: Final = 1
"""Images of one user validated at once per process; users take turns for the validation processes
(one image each, round robin), so another user's submission waits for one image, not a queue of them."""
SUBMISSIONS_PER_USER: Final = 2
"""Submissions (REST ``POST /v1/edits`` and ``/v1/batches``, MCP's ``edit_image`` and ``submit_batch``)
one user may have in flight at once per process, from before the body is read to the insert; more are
refused (429 ``too_many_submissions``) before their body is read."""
SUBMISSIONS_IN_FLIGHT: Final = 16
"""Submissions of all users in flight at once per process: each may hold a body of up to
``edit_body_bytes`` (about 84 MB at the default image limit) while it is read and checked."""
TOO_MANY_SUBMISSIONS_RETRY_SECONDS: Final = 2
"""``Retry-After`` of a ``too_many_submissions`` refusal: a submission takes seconds."""

CHANGES_CHANNEL = "edit_request_changes"
"""NOTIFY channel: a request's client-visible state changed (payload: its id)."""
WAIT_MAX_SECONDS = 600
"""Longest a caller may wait for one request (REST ``wait=true``, the MCP tool)."""
STREAM_MAX_SECONDS = 900
"""Longest one event stream stays open; SSE clients reconnect and carry on."""
SSE_KEEPALIVE_SECONDS = 15.0
"""An event stream with nothing to say sends a comment this often, so proxies keep it open."""
WAITS_PER_USER = 4
"""Waits and event streams one user may hold open at once in one process."""
DEFAULT_LIST_LIMIT: Final = 20
"""Requests one list of a user's recent requests shows unless told otherwise."""
MAX_LIST_LIMIT: Final = 100
"""Requests one list shows at most."""
DEFAULT_SIGNED_URL_SECONDS: Final = 3600
"""Lifetime of the signed output URLs handed to users (``SIGNED_URL_SECONDS``)."""
STREAM_TOKEN_SECONDS: Final = 60
"""Lifetime of a stream token (``POST /v1/edits/{id}/stream-token``): long enough to open the stream."""
TOO_MANY_WAITS_RETRY_SECONDS: Final = 5
"""``Retry-After`` of a ``too_many_waits`` refusal: a wait or stream of the user's may end any moment."""
QUOTA_RETRY_SECONDS: Final = 30
"""``Retry-After`` of a ``quota_exceeded`` refusal whose end the database cannot tell (``max_in_flight``:
when one of the user's requests finishes)."""
LIMIT_RETRY_SECONDS: Final = 10
"""``Retry-After`` of any other 429."""
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
DEFAULT_WEBHOOK_CONCURRENCY: Final = 4
"""``WEBHOOK_CONCURRENCY``: deliveries in flight at once per process."""
DEFAULT_WEBHOOK_TIMEOUT_SECONDS: Final = 10.0
"""``WEBHOOK_TIMEOUT_SECONDS``: one attempt's deadline."""
DEFAULT_WEBHOOK_LEASE_SECONDS: Final = 60
"""``WEBHOOK_LEASE_SECONDS``: how long a claimed delivery is one process's."""
DEFAULT_WEBHOOK_POLL_SECONDS: Final = 1.0
"""``WEBHOOK_POLL_INTERVAL_SECONDS``: how often due deliveries are looked for when there were none."""
WEBHOOK_MAX_RESPONSE_BYTES: Final = 64 * 1024
"""What is read of a receiver's answer before the connection is closed (only the status matters)."""
WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT: Final = 2
"""Deliveries of one endpoint in flight at once, across all processes (the default of
``edit_webhook_settings.max_in_flight_per_endpoint``): a silent endpoint holds no more slots than this,
each for the whole timeout, and a user's broken endpoint leaves room for their others."""
WEBHOOK_MAX_IN_FLIGHT_PER_USER: Final = 3
"""Deliveries of one user in flight at once, whatever their number of endpoints (the default of
``edit_webhook_settings.max_in_flight_per_user``): below ``WEBHOOK_CONCURRENCY``'s default of 4, so one
user never holds every slot of a process."""
WEBHOOK_CIRCUIT_FAILURES: Final = 5
"""Failed attempts in a row after which an endpoint's circuit opens (``edit_webhook_circuit_failures()``):
none of its deliveries is claimed until ``webhook_backoff_seconds(failures)`` has passed, then one probe at
a time; a success closes it. Five timeouts of 10 s, and an endpoint that answers nothing holds slots for
less than a minute before it is backed off for 4 minutes, then 8, ... at most 3 hours."""


def webhook_backoff_seconds(attempts: int) -> float:
    """The nominal wait after ``attempts`` attempts (before jitter): 15 s, 30 s, 60 s … at most 3 h."""
    return float(min(WEBHOOK_BACKOFF_MAX_SECONDS, WEBHOOK_BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0)))


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
DEFAULT_RETENTION_RUN_SECONDS: Final = 300
"""How long one run keeps taking batches while the last one deleted something (``0``: one batch a run).
One batch an hour deleted at most 500 objects an hour, all kinds together, while uploads have no
such bound; at about a second a batch, five minutes an hour delete a few hundred thousand."""
MAX_RETENTION_RUN_SECONDS: Final = 3600
DEFAULT_RETENTION_INTERVAL_SECONDS: Final = 3600
MIN_RETENTION_INTERVAL_SECONDS: Final = 60
RETENTION_LEASE_SECONDS: Final = 600
"""How long one run holds the retention lease (another processor takes over after it lapses)."""
RETENTION_STATEMENT_TIMEOUT_SECONDS: Final = 60
"""Each retention statement's limit. A call looks at a bounded window (20 x the batch of rows and of
objects) and takes well under a second at 100,000 due rows (docs/retention.md); a statement that
runs past this ends the run as failed, with its lease released, instead of holding a connection
and the row locks of its marks."""
RetentionKind = Literal["input", "output", "orphan"]
"""What a retention candidate is: an input or output of a finished request, or an orphan upload."""
