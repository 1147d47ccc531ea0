"""Typed failures with machine-readable reason codes.

Every failure the processor can explain carries a ``reason`` (a short snake_case code
that dashboards group by and clients switch on) and says whether retrying can help.
The worker maps ``retryable`` straight onto ``fail_edit_request(..., p_retryable)``.
"""

from __future__ import annotations

from processor.domain.reasons import ReasonCode


def install_extra(extra: str) -> str:
    """How to install an extra, for messages: by name, and from a clone (the name is not on PyPI yet)."""
    return f"pip install 'qwen-edit-processor[{extra}]' (from a clone: pip install -e '.[{extra}]')"


class ProcessorError(Exception):
    """Base class: a failure with a reason code and a retry verdict."""

    reason: ReasonCode = ReasonCode.INTERNAL_ERROR
    retryable: bool = False

    def __init__(self, message: str, *, reason: ReasonCode | str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            # ``ReasonCode(...)``: a code outside the enumeration is a bug, caught where it is raised.
            self.reason = ReasonCode(reason)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.args else self.reason


class InvalidInput(ProcessorError):
    """The request itself is bad (image, prompt, parameters). Retrying cannot help.

    Its reason codes are the first group of ``reasons.ReasonCode`` (see ``docs/reason-codes.md``).
    """

    reason = ReasonCode.INVALID_INPUT
    retryable = False


class TransientError(ProcessorError):
    """A fault outside the request (storage, network, database) that may pass."""

    reason = ReasonCode.TRANSIENT_ERROR
    retryable = True


class ModelError(ProcessorError):
    """The model failed on this request (out of memory, NaN output, backend error).

    Retried as its reason code says (``reasons.REASONS``): ``model_error`` is (another attempt,
    possibly on another worker, may succeed; the attempts cap in the database keeps a poison request
    from looping forever), ``out_of_memory`` and ``nan_output`` are not: the same weights at the same
    sizes fail the same way, and each attempt would run the edit again for one charge (decision 0073).
    """

    reason = ReasonCode.MODEL_ERROR
    retryable = True

    def __init__(self, message: str, *, reason: ReasonCode | str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retryable = self.reason.retryable is not False


class WorkflowError(ProcessorError):
    """An external engine's workflow failed on this request (a ComfyUI node raised).

    Not retried: the same workflow on the same inputs fails the same way (a missing model
    file, an incompatible input). Reason codes: ``comfyui_node_error``,
    ``comfyui_invalid_workflow`` (ComfyUI refused the workflow before running it).
    """

    reason = ReasonCode.WORKFLOW_ERROR
    retryable = False


class EditCancelled(ProcessorError):
    """A running edit was stopped between steps at the caller's request."""

    reason = ReasonCode.CANCELED
    retryable = False


class ConfigurationError(ProcessorError):
    """A setting is missing or malformed; raised at start-up."""

    reason = ReasonCode.CONFIGURATION_ERROR
    retryable = False


class LimitExceeded(ProcessorError):
    """The caller holds as much of something as one user may (open waits, for example): HTTP 429.

    ``retry_after``: seconds until the refused request would pass, where the limit can tell."""

    reason = ReasonCode.LIMIT_EXCEEDED
    retryable = True

    def __init__(
        self, message: str, *, reason: ReasonCode | str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class Unauthorized(ProcessorError):
    """The caller is no user the database knows (no token, a bad one, or one whose user is gone): HTTP 401."""

    reason = ReasonCode.UNAUTHORIZED
    retryable = False


class NotFound(ProcessorError):
    """No such request or batch for this user (another user's is the same answer): HTTP 404."""

    reason = ReasonCode.NOT_FOUND
    retryable = False


class KeyTaken(ProcessorError):
    """An insert named an idempotency key the user's earlier request already holds. Internal: the
    use case answers with that request, or refuses with ``idempotency_key_reused``."""

    reason = ReasonCode.IDEMPOTENCY_KEY_REUSED
    retryable = False


class AlreadyFinished(ProcessorError):
    """The request finished before the action could change it (a cancel): HTTP 409."""

    reason = ReasonCode.ALREADY_FINISHED
    retryable = False
