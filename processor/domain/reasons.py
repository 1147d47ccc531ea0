"""Reason codes: every code the processor, its ways in and its SQL can give, and what each means.

Written to ``edit_requests.error_code`` (a CHECK constraint holds it to ``ReasonCode``'s values),
returned as ``error.code`` by the REST API, ``error_code`` by RunPod and the prefix of MCP tool
errors and CLI messages; ``docs/reason-codes.md`` lists them (a test keeps it equal to ``REASONS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


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
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BODY_TOO_LARGE = "body_too_large"
    TOO_MANY_WAITS = "too_many_waits"
    TOO_MANY_SUBMISSIONS = "too_many_submissions"
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
    ReasonCode.IDEMPOTENCY_KEY_REUSED: Reason(
        "The idempotency key was used before for a request with another body.", None
    ),
    ReasonCode.METHOD_NOT_ALLOWED: Reason("The route does not take this HTTP method.", None),
    ReasonCode.BODY_TOO_LARGE: Reason(
        "The HTTP body is larger than three images at the byte limit need.", None
    ),
    ReasonCode.TOO_MANY_WAITS: Reason(
        "The user already holds as many waits and event streams as allowed.", None
    ),
    ReasonCode.TOO_MANY_SUBMISSIONS: Reason(
        "The user, or the whole process, already has as many submissions being read and checked as allowed.",
        None,
    ),
    ReasonCode.LIMIT_EXCEEDED: Reason("The caller is over a limit no narrower code names.", None),
    ReasonCode.QUOTA_EXCEEDED: Reason(
        "The user has as many requests in flight, or in the last hour, or as much cost, or as many stored inputs as edit_user_limits allows.",
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
    ReasonCode.OUT_OF_MEMORY: Reason(
        "The GPU ran out of memory for this request; not retried: it would again (submit a smaller one).",
        False,
    ),
    ReasonCode.NAN_OUTPUT: Reason(
        "The model produced NaN or infinite values; not retried: the same request would again.", False
    ),
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
