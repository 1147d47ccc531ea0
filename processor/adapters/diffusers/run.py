"""What runs inside one pipeline call: the stage clock, progress, cancellation and NaN checks from
the step callback, previews handed off, the pipeline subclass whose encoding stages report to
the run (engine.py's docstring says why the engine runs the pipeline this way), and the inputs
prepared before the engine's lock (``PreparedInputs``).

Prepared inputs: the pipeline resizes and preprocesses its inputs and runs the Qwen2-VL processor
inside its ``__call__``, all CPU work. ``prepare_inputs`` does that work first, outside the lock,
with the pipeline's own functions, and keeps each result under the arguments the pipeline will pass;
during the call (``using``) the pipeline's image processor and processor answer from it. Anything
not prepared (a future diffusers that asks differently) is computed as before and counted as a miss,
so the output never depends on the preparation.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as _plus_module
from PIL import Image

from processor.adapters.diffusers.previews import PreviewWorker, project, unpack
from processor.domain.ports.editor import PreviewSink, ProgressCallback
from processor.domain.sizing import ModelSizing

log = logging.getLogger(__name__)


class SizingGate:
    """Sets the pipeline module's sizing globals for the calls that run, one sizing at a time.

    ``pipeline_qwenimage_edit_plus`` reads ``VAE_IMAGE_SIZE`` and ``CONDITION_IMAGE_SIZE``
    at call time. Calls with the same sizing run together (each editor still runs one
    edit at a time under its own lock); a call with another sizing waits until they are
    done. In a process with one model the gate is never contended. Between calls the
    globals hold diffusers' own values again.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._defaults = (_plus_module.VAE_IMAGE_SIZE, _plus_module.CONDITION_IMAGE_SIZE)
        self._current: tuple[int, int] | None = None
        self._active = 0

    @contextmanager
    def applied(self, sizing: ModelSizing) -> Iterator[None]:
        wanted = (sizing.vae_image_area, sizing.condition_image_area)
        with self._changed:
            self._changed.wait_for(lambda: self._active == 0 or self._current == wanted)
            if self._active == 0:
                _plus_module.VAE_IMAGE_SIZE, _plus_module.CONDITION_IMAGE_SIZE = wanted
                self._current = wanted
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                if self._active == 0:
                    _plus_module.VAE_IMAGE_SIZE, _plus_module.CONDITION_IMAGE_SIZE = self._defaults
                    self._current = None
                    self._changed.notify_all()


sizing_gate = SizingGate()


class Cancelled(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class NonFinite(Exception):
    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


class RunPreviews:
    """One edit's previews: where they go, the thread that encodes them, and the colour map."""

    def __init__(
        self,
        sink: PreviewSink,
        worker: PreviewWorker,
        weights: torch.Tensor,
        height: int,
        width: int,
        vae_scale_factor: int,
    ) -> None:
        self.sink = sink
        self.worker = worker
        self.height = height
        self.width = width
        self.vae_scale_factor = vae_scale_factor
        self._weights = weights
        self._device_weights: torch.Tensor | None = None

    def step(self, step: int, total: int, latents: torch.Tensor) -> None:
        """In the step callback: project (a few small kernels) and hand over; never waits."""
        if not self.sink.wants(step, total):
            return
        if self._device_weights is None:
            self._device_weights = self._weights.to(latents.device)
        unpacked = unpack(latents.detach(), self.height, self.width, self.vae_scale_factor)
        self.worker.offer(step, project(unpacked, self._device_weights))


class Run:
    """One edit's progress, cancellation and stage clock, driven from inside the pipeline."""

    previews: RunPreviews | None = None

    def __init__(
        self,
        synchronize: Callable[[], None],
        total_steps: int,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> None:
        self.timings: dict[str, float] = {}
        self._synchronize = synchronize
        self._total = total_steps
        self._on_progress = on_progress
        self._cancel = cancel
        self._denoising_started: float | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the stage's device time to ``timings[name]`` (stages like prompt encoding run twice)."""
        self._synchronize()
        started = time.perf_counter()
        yield
        self._synchronize()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started

    def raise_if_cancelled(self, step: int = 0) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled(step)

    def denoising_starts(self) -> None:
        self._denoising_started = time.perf_counter()

    def check_finite(self, tensor: torch.Tensor, where: str) -> None:
        # .item() waits for the device, so this is also the step's synchronisation point.
        if not bool(torch.isfinite(tensor).all().item()):
            raise NonFinite(where)

    def on_step_end(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        """``callback_on_step_end``: check, report progress, stop if cancelled."""
        step = index + 1
        self.check_finite(tensors["latents"], f"latents after step {step}")
        if step == self._total and self._denoising_started is not None:
            self.timings["denoising"] = time.perf_counter() - self._denoising_started
        if self._on_progress is not None:
            try:
                self._on_progress(step, self._total)
            except Exception:
                log.exception("progress callback failed; the edit goes on")
        if self.previews is not None:
            try:
                self.previews.step(step, self._total, tensors["latents"])
            except Exception:
                log.exception("preview failed; the edit goes on")
        self.raise_if_cancelled(step)
        return {}


class InstrumentedPipeline(QwenImageEditPlusPipeline):  # type: ignore[misc]
    """``QwenImageEditPlusPipeline`` whose encoding stages report to the edit that runs it.

    Loaded with ``from_pretrained`` like its parent; without an attached run it behaves
    exactly like it.
    """

    _edit_run: Run | None = None
    _pinned_device: torch.device | None = None
    _stateful_hooks = True

    def attach_run(self, run: Run | None) -> None:
        self._edit_run = run

    def pin_placement(self, *, stateful_hooks: bool) -> None:
        """The pipeline is placed for good (the engine calls it once it is built): its execution device is
        worked out once, not on every call, and ``stateful_hooks`` says whether any hook keeps state
        between calls (the step cache). diffusers walks every module of every component for both on
        every call, CPU time the GPU waits for (issue #21)."""
        self._pinned_device = None
        self._pinned_device = self._execution_device
        self._stateful_hooks = stateful_hooks

    @property
    def _execution_device(self) -> torch.device:
        if self._pinned_device is not None:
            return self._pinned_device
        device: torch.device = super()._execution_device
        return device

    def maybe_free_model_hooks(self) -> None:
        # Without offload hooks and without stateful hooks, diffusers' version resets nothing and
        # offloads nothing; it only walks the modules to find that out.
        if (
            self._pinned_device is not None
            and not self._stateful_hooks
            and not getattr(self, "_all_hooks", None)
        ):
            return
        super().maybe_free_model_hooks()

    def encode_prompt(self, *args: Any, **kwargs: Any) -> Any:
        run = self._edit_run
        if run is None:
            return super().encode_prompt(*args, **kwargs)
        run.raise_if_cancelled()
        with run.stage("prompt_encoding"):
            return super().encode_prompt(*args, **kwargs)

    def prepare_latents(self, *args: Any, **kwargs: Any) -> Any:
        run = self._edit_run
        if run is None:
            return super().prepare_latents(*args, **kwargs)
        run.raise_if_cancelled()
        with run.stage("image_encoding"):
            prepared = super().prepare_latents(*args, **kwargs)
        run.denoising_starts()
        return prepared


# --- inputs prepared before the lock ---------------------------------------------------------------

_current = threading.local()
"""Per thread: the ``PreparedInputs`` the pipeline call running in it answers from (``using``), or
the one ``prepare_inputs`` is recording into. Thread-local, so a preparation never sees the call
that holds the lock in another thread, nor the other way round."""


class _Recorded(Exception):
    """Raised by the processor once it has recorded its output during a preparation."""


class PreparedInputs:
    """One edit's CPU work, done before the lock: condition images, VAE images, processor outputs."""

    def __init__(self, images: Sequence[Image.Image]) -> None:
        self.images = list(images)  # keeps the keys' objects alive, so their ids stay theirs
        self.resized: dict[Hashable, Image.Image] = {}
        self.preprocessed: dict[Hashable, torch.Tensor] = {}
        self.processed: dict[Hashable, Any] = {}
        self.misses: list[str] = []
        """What the pipeline asked for that was not prepared (computed then, under the lock)."""
        self.recording = False


def _image_key(image: Any, height: int, width: int) -> Hashable:
    return (id(image), height, width)


def _processor_key(text: Any, images: Any, options: dict[str, Any]) -> Hashable | None:
    if isinstance(text, str):
        text = [text]
    if images is None:
        images = []
    elif not isinstance(images, (list, tuple)):
        images = [images]
    try:
        return (tuple(text), tuple(id(image) for image in images), tuple(sorted(options.items())))
    except TypeError:  # an unhashable option: not a call the pipeline makes
        return None


def _prepared() -> PreparedInputs | None:
    prepared: PreparedInputs | None = getattr(_current, "prepared", None)
    return prepared


@contextmanager
def using(prepared: PreparedInputs | None) -> Iterator[None]:
    """The pipeline call in this thread answers from ``prepared``."""
    previous = _prepared()
    _current.prepared = prepared
    try:
        yield
    finally:
        _current.prepared = previous


class PreparedImageProcessor:
    """The pipeline's ``VaeImageProcessor``, answering ``resize`` and ``preprocess`` from the prepared
    inputs where it can; everything else is the processor's own."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def resize(self, image: Any, height: int, width: int, *args: Any, **kwargs: Any) -> Any:
        prepared = _prepared()
        if prepared is not None and not prepared.recording and not args and not kwargs:
            hit = prepared.resized.get(_image_key(image, height, width))
            if hit is not None:
                return hit
            prepared.misses.append("resize")
        return self.inner.resize(image, height, width, *args, **kwargs)

    def preprocess(
        self, image: Any, height: int | None = None, width: int | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        prepared = _prepared()
        if prepared is not None and not prepared.recording and not args and not kwargs:
            hit = prepared.preprocessed.get(_image_key(image, height or 0, width or 0))
            if hit is not None:
                return hit
            prepared.misses.append("preprocess")
        return self.inner.preprocess(image, height, width, *args, **kwargs)


class PreparedProcessor:
    """The pipeline's Qwen2-VL processor, answering from the prepared inputs where it can; while a
    preparation records, it computes, keeps the output and stops the caller (``_Recorded``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, *args: Any, text: Any = None, images: Any = None, **options: Any) -> Any:
        prepared = _prepared()
        key = None if args or prepared is None else _processor_key(text, images, options)
        if prepared is not None and key is not None:
            if prepared.recording:
                prepared.processed[key] = self.inner(text=text, images=images, **options)
                raise _Recorded
            hit = prepared.processed.get(key)
            if hit is not None:
                return hit
        if prepared is not None and not prepared.recording:
            prepared.misses.append("processor")
        return self.inner(*args, text=text, images=images, **options)


def unwrapped(component: Any) -> Any:
    """A pipeline component without the answering wrapper ``install_prepared_inputs`` put around it."""
    return (
        component.inner if isinstance(component, (PreparedProcessor, PreparedImageProcessor)) else component
    )


def install_prepared_inputs(pipe: Any) -> None:
    """Put the answering processors in place (idempotent). The processor goes straight into the
    instance's ``__dict__``: ``DiffusionPipeline.__setattr__`` would rewrite the pipeline's config."""
    if not isinstance(pipe.image_processor, PreparedImageProcessor):
        pipe.image_processor = PreparedImageProcessor(pipe.image_processor)
    processor = getattr(pipe, "processor", None)
    if processor is not None and not isinstance(processor, PreparedProcessor):
        pipe.__dict__["processor"] = PreparedProcessor(processor)


def prepare_inputs(
    pipe: Any,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    *,
    vae_image_area: int,
    condition_image_area: int,
) -> PreparedInputs:
    """The CPU work of ``QwenImageEditPlusPipeline.__call__`` for ``images`` and each prompt (the
    prompt, and the negative one with CFG), done here, with the pipeline's own functions and
    template, as the call will ask for it. Thread-safe: touches nothing the running call uses."""
    prepared = PreparedInputs(images)
    image_processor = pipe.image_processor
    inner = image_processor.inner if isinstance(image_processor, PreparedImageProcessor) else image_processor
    condition_images = []
    for image in prepared.images:
        ratio = image.width / image.height
        condition_width, condition_height = _plus_module.calculate_dimensions(condition_image_area, ratio)
        vae_width, vae_height = _plus_module.calculate_dimensions(vae_image_area, ratio)
        condition = inner.resize(image, condition_height, condition_width)
        condition_images.append(condition)
        prepared.resized[_image_key(image, condition_height, condition_width)] = condition
        prepared.preprocessed[_image_key(image, vae_height, vae_width)] = inner.preprocess(
            image, vae_height, vae_width
        )
    prepared.recording = True
    try:
        with using(prepared):
            for prompt in prompts:
                # The pipeline's own method builds the text from its template; the processor
                # records its output and stops it before the text encoder runs.
                with contextlib.suppress(_Recorded):
                    pipe._get_qwen_prompt_embeds(
                        [prompt], condition_images, torch.device("cpu"), torch.float32
                    )
    except Exception:
        # Not prepared is only slower: the call computes it under the lock, as it always did.
        log.warning("the prompt could not be prepared before the lock", exc_info=True)
    finally:
        prepared.recording = False
    return prepared
