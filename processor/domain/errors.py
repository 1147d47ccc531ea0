"""Typed failures with machine-readable reason codes.

Every failure the processor can explain carries a ``reason`` (a short snake_case code
that dashboards group by and clients switch on) and says whether retrying can help.
The worker maps ``retryable`` straight onto ``fail_edit_request(..., p_retryable)``.
"""

from __future__ import annotations


class ProcessorError(Exception):
    """Base class: a failure with a reason code and a retry verdict."""

    reason: str = "internal_error"
    retryable: bool = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.args else self.reason


class InvalidInput(ProcessorError):
    """The request itself is bad (image, prompt, parameters). Retrying cannot help.

    Reason codes in use: ``empty_image``, ``truncated_image``, ``unknown_format``,
    ``too_many_bytes``, ``too_many_pixels``, ``too_small``, ``animated_image``,
    ``too_many_images``, ``invalid_size``, ``invalid_parameter``,
    ``invalid_prompt``, ``missing_object``, ``forbidden_path``.
    """

    reason = "invalid_input"
    retryable = False


class TransientError(ProcessorError):
    """A fault outside the request (storage, network, database) that may pass."""

    reason = "transient_error"
    retryable = True


class ModelError(ProcessorError):
    """The model failed on this request (out of memory, NaN output, backend error).

    Retryable: another attempt, possibly on another worker, may succeed; the
    attempts cap in the database keeps a poison request from looping forever.
    """

    reason = "model_error"
    retryable = True


class WorkflowError(ProcessorError):
    """An external engine's workflow failed on this request (a ComfyUI node raised).

    Not retried: the same workflow on the same inputs fails the same way (a missing model
    file, an incompatible input). Reason codes: ``comfyui_node_error``,
    ``comfyui_invalid_workflow`` (ComfyUI refused the workflow before running it).
    """

    reason = "workflow_error"
    retryable = False


class EditCancelled(ProcessorError):
    """A running edit was stopped between steps at the caller's request."""

    reason = "canceled"
    retryable = False


class ConfigurationError(ProcessorError):
    """A setting is missing or malformed; raised at start-up."""

    reason = "configuration_error"
    retryable = False


class LimitExceeded(ProcessorError):
    """The caller holds as much of something as one user may (open waits, for example): HTTP 429."""

    reason = "limit_exceeded"
    retryable = True
