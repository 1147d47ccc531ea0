"""Ports: the interfaces the core depends on, and the domain types they exchange.

The worker and the submission service talk only to these protocols. Adapters implement
them (``adapters.postgres``, ``adapters.supabase_storage``, ``adapters.diffusers``,
``adapters.comfyui``, ``adapters.memory``), and tests swap adapters, never internals.

Every port owns its lifecycle: ``open`` acquires what the adapter needs (pools, HTTP
clients), ``close`` releases it and may be called more than once. Whoever builds an
adapter (the composition root) opens it before use and closes it at the end.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image

from processor.domain import rules
from processor.domain.rules import SpeedPreset
from processor.domain.speed import LoraChoice
from processor.domain.users import User

HeartbeatAnswer = Literal["ok", "lost", "canceled"]
"""What ``heartbeat_edit_request`` answers: keep going, abandon silently, or stop."""

BaseCanvas = rules.Base
"""What a request without input images starts from: a plain canvas, or seeded noise."""

ProgressCallback = Callable[[int, int], None]
"""Called after every denoising step with ``(step, total)``; ``step`` counts from 1."""


@dataclass(frozen=True, slots=True)
class Preview:
    """A small picture of an edit in progress (docs/previews.md), encoded and ready to upload."""

    step: int
    """The denoising step it shows, counting from 1."""
    total: int
    data: bytes
    content_type: str
    """``image/webp``, ``image/jpeg`` or ``image/png``."""
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class PreviewSink:
    """Where an editor sends previews: one every ``every_steps`` steps, to ``deliver``.

    ``deliver`` may be called from any thread and returns at once (it only hands the preview
    on); an editor calls it off its step path, and never after ``edit`` has returned.
    """

    every_steps: int
    deliver: Callable[[Preview], None]

    def wants(self, step: int, total: int) -> bool:
        """Whether step ``step`` (from 1) gets a preview: every K-th, never the last (the output follows)."""
        return self.every_steps > 0 and step % self.every_steps == 0 and step < total


@dataclass(frozen=True, slots=True)
class EditParams:
    """Generation parameters, with the model card's defaults."""

    prompt: str
    negative_prompt: str = rules.DEFAULT_NEGATIVE_PROMPT
    num_inference_steps: int = rules.DEFAULT_STEPS
    true_cfg_scale: float = rules.DEFAULT_TRUE_CFG_SCALE
    guidance_scale: float = rules.DEFAULT_GUIDANCE_SCALE
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    base: BaseCanvas = rules.DEFAULT_BASE
    """Used only without input images: the engine then edits a canvas it builds."""
    base_color: str = rules.DEFAULT_BASE_COLOR
    """``#rrggbb`` of a ``blank`` canvas."""
    speed: SpeedPreset | None = None
    """``quality``, ``fast`` or ``fastest`` (``domain.speed``); ``None``: the deployment's ``SPEED``."""
    loras: tuple[LoraChoice, ...] = ()
    """Allowlisted LoRAs to activate for this edit only."""


@dataclass(frozen=True, slots=True)
class EditResult:
    """An edited image and what produced it."""

    image: Image.Image
    seed: int
    width: int
    height: int
    num_inference_steps: int
    timings: Mapping[str, float]
    """Seconds per stage: ``prompt_encoding``, ``denoising``, ``decoding``, ``total``."""
    model: Mapping[str, Any] = field(default_factory=dict)
    """Model id, revision, device and dtype."""
    base: BaseCanvas | None = None
    """The canvas the edit started from when it had no input image; ``None`` for edits."""
    run: Mapping[str, Any] = field(default_factory=dict)
    """How it ran, when the engine chose (speed preset, guidance, scheduler, LoRAs and scales)."""

    def metadata(self) -> dict[str, Any]:
        """Everything but the image, JSON-ready (stored in ``edit_requests.result``)."""
        metadata = {
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "num_inference_steps": self.num_inference_steps,
            "timings": dict(self.timings),
            "model": dict(self.model),
        }
        if self.base is not None:
            metadata["base"] = self.base
        metadata.update(self.run)
        return metadata


@runtime_checkable
class Editor(Protocol):
    """Turns 0 to 3 images and a prompt into an edited image. Blocking; thread-safe.

    With no image it edits a base canvas it builds itself (``images.base_canvas`` of
    ``params.base`` at ``params.width`` × ``params.height``, default the model's native
    square), so creation and editing share one path.

    Implementations serialise edits on their device, so concurrent callers queue.
    ``cancel`` is polled between steps; when set, the edit raises
    ``errors.EditCancelled`` without decoding. Bad input raises ``errors.InvalidInput``.
    With ``previews``, the editor sends a small picture every ``previews.every_steps`` steps
    without slowing the steps (docs/previews.md); an editor that cannot may send none.
    """

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
    ) -> EditResult: ...

    def describe(self) -> Mapping[str, Any]:
        """Model id, revision, device, dtype: recorded with every result."""
        ...

    def close(self) -> None:
        """Release the model or the connection to the engine. Idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class EditJob:
    """A claimed ``edit_requests`` row: what the worker needs to run it."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    prompt: str
    negative_prompt: str
    input_bucket: str
    input_paths: tuple[str, ...]
    output_bucket: str
    num_inference_steps: int
    true_cfg_scale: float
    guidance_scale: float
    seed: int | None
    attempts: int
    max_attempts: int
    created_at: datetime | None = None
    width: int | None = None
    height: int | None = None
    base: BaseCanvas = rules.DEFAULT_BASE
    base_color: str = rules.DEFAULT_BASE_COLOR
    speed: SpeedPreset | None = None
    loras: tuple[LoraChoice, ...] = ()

    def params(self) -> EditParams:
        # The row's columns are named as EditParams' fields: copied by name, not by hand.
        return EditParams(**{name: getattr(self, name) for name in _PARAM_FIELDS})


_PARAM_FIELDS = tuple(field.name for field in fields(EditParams))


class JobQueue(Protocol):
    """The ``edit_requests`` state machine. Every method calls one SQL function."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Return when the backend answers; ``TransientError`` otherwise (for ``/readyz``)."""
        ...

    async def stats(self) -> tuple[dict[str, int], float]:
        """Row counts by status, and the age in seconds of the oldest due queued request."""
        ...

    async def ensure_lease_sweep(self) -> str:
        """Schedule the backend's own lease sweep where it can (pg_cron) and say how it stands:
        ``scheduled``, ``not_scheduled`` or ``pg_cron_missing``."""
        ...

    async def claim(
        self, worker_id: str, lease_seconds: int, request_id: uuid.UUID | None = None
    ) -> EditJob | None: ...

    async def heartbeat(
        self, job_id: uuid.UUID, worker_id: str, progress: float | None, lease_seconds: int
    ) -> HeartbeatAnswer: ...

    async def complete(
        self, job_id: uuid.UUID, worker_id: str, output_path: str, result: Mapping[str, Any]
    ) -> bool: ...

    async def fail(
        self, job_id: uuid.UUID, worker_id: str, error: str, *, retryable: bool, error_code: str
    ) -> str: ...

    async def preview(self, job_id: uuid.UUID, worker_id: str, path: str, step: int) -> bool:
        """Record the latest live preview (``preview_edit_request``): only the lease holder, while
        the row is processing, with a step above the last one; False when nothing was written."""
        ...

    async def release(self, job_id: uuid.UUID, worker_id: str) -> bool: ...

    async def requeue_expired(self) -> int: ...


class ObjectStorage(Protocol):
    """Supabase Storage, as the worker needs it."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def download(self, bucket: str, path: str, *, max_bytes: int) -> bytes:
        """The object's bytes. ``InvalidInput('missing_object')`` when absent,
        ``InvalidInput('too_many_bytes')`` past ``max_bytes``, ``TransientError`` on faults."""
        ...

    async def upload(self, bucket: str, path: str, data: bytes, *, content_type: str) -> None:
        """Create or overwrite (upsert) the object."""
        ...

    async def signed_url(self, bucket: str, path: str, *, expires_in: int) -> str: ...

    async def delete_many(self, bucket: str, paths: Sequence[str]) -> list[str]:
        """Delete these objects (exact names, not prefixes) and return the names deleted.

        Names Storage does not hold, or keeps (the database refused: a live request needs the
        object), are left out of the answer, never an error; ``TransientError`` on faults, in
        which case some may be deleted already (calling again is harmless)."""
        ...


@dataclass(frozen=True, slots=True)
class RetentionCandidate:
    """An object due for deletion: an input or output of a finished request, or an orphan upload."""

    kind: rules.RetentionKind
    bucket: str
    path: str


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long objects are kept; ``None`` keeps them forever."""

    input_age: timedelta | None = timedelta(hours=rules.DEFAULT_INPUT_RETENTION_HOURS)
    output_age: timedelta | None = timedelta(hours=rules.DEFAULT_OUTPUT_RETENTION_HOURS)
    orphan_grace: timedelta | None = timedelta(hours=rules.DEFAULT_ORPHAN_GRACE_HOURS)
    batch_size: int = rules.DEFAULT_RETENTION_BATCH_SIZE

    @property
    def keeps_everything(self) -> bool:
        return self.input_age is None and self.output_age is None and self.orphan_grace is None


class RetentionStore(Protocol):
    """What is due and what is gone, in the database (``edit_retention_*`` SQL functions)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def candidates(self, worker_id: str, policy: RetentionPolicy) -> list[RetentionCandidate]:
        """At most ``policy.batch_size`` objects due; empty while another worker holds the lease."""
        ...

    async def mark_deleted(self, bucket: str, paths: Sequence[str]) -> int:
        """Mark the finished rows whose objects among ``paths`` Storage no longer holds; rows marked."""
        ...

    async def release(self, worker_id: str) -> None: ...


class UserRequests(Protocol):
    """``edit_requests`` as one user sees it: every call runs as that user, under RLS."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert(
        self,
        user: User,
        request_id: uuid.UUID,
        paths: Sequence[str],
        params: EditParams,
        *,
        webhook_endpoint_id: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        """Insert the row (naming one of the user's webhook endpoints, if given); ``InvalidInput``
        when the schema refuses it."""
        ...

    async def get(self, user: User, request_id: uuid.UUID) -> dict[str, Any] | None: ...

    async def recent(self, user: User, limit: int = 20) -> list[dict[str, Any]]: ...

    async def cancel(self, user: User, request_id: uuid.UUID) -> bool: ...

    async def insert_batch(
        self,
        user: User,
        batch_id: uuid.UUID,
        paths: Sequence[str],
        reference_paths: Sequence[str],
        params: EditParams,
    ) -> dict[str, Any]:
        """Insert a batch: one request per path, each with ``reference_paths`` after its image, all
        under the rules and limits of a single insert. ``InvalidInput`` or ``LimitExceeded`` when the
        schema refuses any of them, and then nothing is created. Returns ``get_batch``'s view."""
        ...

    async def get_batch(self, user: User, batch_id: uuid.UUID) -> dict[str, Any] | None:
        """The batch's counts by status, ``finished`` and ``progress`` (``edit_batch_progress``), with
        ``items``: its requests as ``get`` shows them, in the batch's order; None when not theirs."""
        ...

    async def cancel_batch(self, user: User, batch_id: uuid.UUID) -> int:
        """Cancel the batch's requests that have not finished (``cancel_edit_batch``); how many."""
        ...


class Wakeups(Protocol):
    """Pushes from the database: a request may be claimable, or one was canceled."""

    async def run(
        self,
        *,
        on_queued: Callable[[uuid.UUID | None], None],
        on_cancel: Callable[[uuid.UUID], None],
        stop: asyncio.Event,
    ) -> None:
        """Dispatch until ``stop`` is set, reconnecting as needed; ``on_queued(None)`` after each connect."""
        ...


class Watch(Protocol):
    """A registration for one row's changes, made before the row is read so no change is missed."""

    async def wait(self, timeout: float) -> bool:
        """Return True once the row changed since the last wait (or the watch began), False on timeout."""
        ...


class RowChanges(Protocol):
    """Pushes when a request's client-visible state changes (status, progress, output, reason)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def watch(self, request_id: uuid.UUID) -> AbstractAsyncContextManager[Watch]: ...


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """A claimed ``edit_webhook_deliveries`` row with its endpoint: one attempt to send."""

    id: uuid.UUID
    """Also the ``webhook-id`` header: the same on every attempt, so receivers drop duplicates."""
    request_id: uuid.UUID
    url: str
    secret: str
    """The endpoint's ``whsec_…`` secret, read at claim time (a rotated secret signs the next attempt)."""
    payload: Mapping[str, Any]
    attempts: int
    """Attempts so far, this one included."""
    refusal: str | None = None
    """Why the URL is refused now (the database's allowlist and settings), or None."""


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What one attempt came to: delivered (a 2xx), or why not."""

    status_code: int | None
    error: str | None = None
    """``kind: detail``, the kind a ``rules.WebhookFailure``; None when delivered."""
    permanent: bool = False
    """Retrying cannot help (the URL is refused): dead at once, replayable by operators."""

    @property
    def delivered(self) -> bool:
        return self.error is None


class WebhookOutbox(Protocol):
    """``edit_webhook_deliveries``: the deliveries the requests' final statuses wrote, and their state."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, worker_id: str, limit: int, lease_seconds: int) -> list[WebhookDelivery]:
        """Up to ``limit`` due deliveries (or lapsed leases), leased to ``worker_id``; each counts an attempt."""
        ...

    async def complete(self, delivery_id: uuid.UUID, worker_id: str, status_code: int) -> bool:
        """Delivered; False when ``worker_id`` no longer holds it."""
        ...

    async def fail(
        self, delivery_id: uuid.UUID, worker_id: str, status_code: int | None, error: str, *, permanent: bool
    ) -> str:
        """``pending`` (retried after the back-off), ``dead`` (attempts used up, or ``permanent``),
        or ``lost`` when ``worker_id`` no longer holds it."""
        ...


class WebhookSender(Protocol):
    """POSTs one signed delivery to a receiver, under the URL rules; never raises for the receiver's faults."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer: ...
