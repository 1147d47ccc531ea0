"""What runs inside one pipeline call: the stage clock, progress, cancellation and NaN checks from
the step callback, previews handed off, and the pipeline subclass whose encoding stages report to
the run (engine.py's docstring says why the engine runs the pipeline this way)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as _plus_module

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

    def attach_run(self, run: Run | None) -> None:
        self._edit_run = run

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
