"""The product's rules in one place: choices, limits and defaults every way in shares.

SQL mirrors them with CHECK constraints; a parity test proves both agree.
"""

from __future__ import annotations

from typing import Literal

MemoryMode = Literal["full", "offload", "quantized"]
"""How the diffusers engine uses GPU memory (``MEMORY_MODE``)."""
Quantization = Literal["nf4", "int8"]
"""Transformer weights with ``MEMORY_MODE=quantized`` (``QUANTIZATION``)."""
DeviceChoice = Literal["auto", "cuda", "cpu"]
"""Where the model runs (``DEVICE``): ``auto`` is CUDA when available."""

WEBHOOK_MAX_BODY_BYTES = 256 * 1024
"""A database webhook carries one row (and its old version on UPDATE): a few KB, 256 KiB at most."""

JPEG_MAX_SCANS = 100
"""Scans a progressive JPEG may have. Encoders write 10 (libjpeg's simple progression) to a few dozen;
each scan re-walks every coefficient, so thousands of tiny scans turn 0.4 MB into minutes of decoding."""
JPEG_MAX_PIXEL_SCANS = 25_000_000 * 12
"""Decode work bound: scans × pixels. A 25 MP photo with the usual 10 scans passes; measured here at
about 23 ms per megapixel-scan, this caps a decode at roughly 7 s of one core."""

VALIDATION_THREADS = 2
"""Uploads validated at once per process; more wait their turn instead of taking the threads edits use."""

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

EDIT_BODY_FIELDS_BYTES = 64 * 1024
"""What ``POST /v1/edits`` may carry besides its images (prompts and parameters, as JSON or form fields)."""
MULTIPART_MAX_FIELDS = 32
"""Form fields parsed from one multipart body before it is refused (Starlette's default is 1,000)."""


def edit_body_bytes(max_images: int, max_image_bytes: int) -> int:
    """The largest ``POST /v1/edits`` body: every image at the byte limit, base64-encoded (4/3, the
    larger of JSON's and multipart's encodings), plus the fields."""
    return max_images * (4 * -(-max_image_bytes // 3) + 1024) + EDIT_BODY_FIELDS_BYTES
