"""The editor port: turns images and a prompt into an edited image (diffusers, ComfyUI)."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from processor.domain.request import EditParams
from processor.domain.rules import Base

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
    base: Base | None = None
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
    An editor may also offer ``prepare`` (``takes_prepared``): its CPU work, done before its device
    is free.
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


def engine_count(editor: Editor) -> int:
    """How many edits the editor runs at once (``engines``: one per GPU of an ``EditorPool``); 1 without."""
    engines = getattr(editor, "engines", 1)
    return engines if isinstance(engines, int) and engines >= 1 else 1


def takes_prepared(editor: Editor) -> bool:
    """Whether the editor can do its CPU work ahead of its device (``prepare``): ``prepare(images, params)``
    returns what ``edit(images, params, prepared=...)`` then starts from. The worker prepares a job before
    the GPU is free; an editor without ``prepare`` does it all inside ``edit``."""
    prepare = getattr(editor, "prepare", None)
    if not callable(prepare):
        return False
    try:
        parameters = inspect.signature(editor.edit).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "prepared" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def takes_previews(editor: Editor) -> bool:
    """Whether ``editor.edit`` takes ``previews`` (an ``Editor`` written before live previews does not:
    it still works, and gets none to send)."""
    try:
        parameters = inspect.signature(editor.edit).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C callable): do not guess
        return False
    return any(p.name == "previews" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class EditorWrapper:
    """An ``Editor`` that forwards to another: the one base of every wrapper (RunPod's progress
    reports, a test's gate or record). A subclass overrides what it changes and calls ``super()``.

    ``owns_inner=False`` when the wrapped editor is shared (loaded once, closed by whoever loaded
    it): then ``close`` leaves it open.
    """

    def __init__(self, inner: Editor, *, owns_inner: bool = True) -> None:
        self.inner = inner
        self._owns_inner = owns_inner

    def describe(self) -> Mapping[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        if self._owns_inner:
            self.inner.close()

    def prepare(self, images: Sequence[Image.Image], params: EditParams) -> object | None:
        """The inner editor's preparation (``takes_prepared``); None when it has none."""
        return self.inner.prepare(images, params) if takes_prepared(self.inner) else None  # type: ignore[attr-defined]

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
        prepared: object | None = None,
    ) -> EditResult:
        options: dict[str, Any] = {}
        if previews is not None and takes_previews(self.inner):
            options["previews"] = previews
        if prepared is not None and takes_prepared(self.inner):
            options["prepared"] = prepared
        return self.inner.edit(images, params, on_progress=on_progress, cancel=cancel, **options)
