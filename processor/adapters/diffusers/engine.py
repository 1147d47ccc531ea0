"""The edit engine: Qwen-Image-Edit-2509 through diffusers' ``QwenImageEditPlusPipeline``.

``DiffusersEditor`` implements ``ports.Editor``. It loads the pipeline once (model id or
local folder, ``loading.py``), runs one edit at a time under a lock (the pipeline and its scheduler
keep per-call state, and one GPU fits one edit), validates inputs and parameters up
front, and returns the image with its seed, size and per-stage timings.

How an edit runs, and why:

* Only device work runs under the lock. Before it, the inputs are resized and preprocessed and the
  Qwen2-VL processor runs (``run.prepare_inputs``, the pipeline's own functions, answered from during
  the call); the decoded output is de-normalised and made 8-bit on the device, and the picture is
  built after the lock is released (``to_pixels``: the bits the pipeline's ``postprocess`` gives).
  Another edit's CPU work (and the worker's encode and upload) overlaps this one's device work.

* The pipeline is called with ``output_type="latent"`` and the engine decodes the
  latents itself, exactly as the pipeline would. That gives the VAE decode its own
  timing and lets a cancelled or failed run end before the decode.
* Stage timings come from a thin subclass (``run.py``, with the step callback) that times
  ``encode_prompt`` (text and vision encoders, twice with CFG) and ``prepare_latents`` (VAE
  encode of the inputs); the
  denoising loop is timed from there to the last step; every mark synchronises the
  device first, so GPU time is measured, not kernel launches. The pipeline's
  ``__call__`` itself is untouched.
* After every step the latents are checked for NaN/inf (which also synchronises, so
  progress reports completed steps), progress is reported, and the cancel event is
  checked. Cancelling raises from the step callback, so the loop stops at once and the
  VAE decode never runs (the pipeline's own ``interrupt`` flag would still decode).
* The noise comes from a CPU generator seeded with the request's seed (drawn when
  absent), so a seed gives the same noise on any device.
* The output size is computed here with the model's own rule (``sizing``) and passed
  explicitly, so it is known and reported.
* Live previews (``previews``, docs/previews.md) are a linear map of the latents to RGB, fitted
  once per model from its own VAE (``previews.fit_projection``); the step callback projects
  and hands the small picture to a thread of its own (``previews.PreviewWorker``).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from PIL import Image

from processor.adapters.diffusers.accelerate import (
    Accelerations,
    apply_accelerations,
    check_accelerations,
    reset_step_cache,
)
from processor.adapters.diffusers.compat import install_mrope_fix
from processor.adapters.diffusers.loading import (
    PIPELINE_CLASS,
    SUPPORTED_MODELS,
    SUPPORTED_PIPELINE_CLASSES,
    load_pipeline,
    public_model_id,
    resolve_device,
)
from processor.adapters.diffusers.loras import (
    AdapterCache,
    AllowedLora,
    LoraSource,
    apply_adapters,
    forget_applied,
)
from processor.adapters.diffusers.presets import LIGHTNING_ADAPTERS, RunPlan, preset_plan
from processor.adapters.diffusers.previews import PreviewWorker, fit_projection
from processor.adapters.diffusers.run import (
    Cancelled,
    InstrumentedPipeline,
    NonFinite,
    PreparedInputs,
    Run,
    RunPreviews,
    install_prepared_inputs,
    prepare_inputs,
    sizing_gate,
    unwrapped,
    using,
)
from processor.domain.errors import ConfigurationError, EditCancelled, InvalidInput, ModelError
from processor.domain.params import PreparedEdit, prepare_edit
from processor.domain.ports.editor import EditResult, PreviewSink, ProgressCallback
from processor.domain.reasons import ReasonCode
from processor.domain.request import EditParams
from processor.domain.rules import (
    DEFAULT_LORA_CACHE_SIZE,
    LIGHTNING_STEPS,
    MIN_STEPS,
    DeviceChoice,
    MemoryMode,
    Quantization,
    SpeedPreset,
)
from processor.domain.sizing import ModelSizing, output_size
from processor.domain.speed import check_loras, check_speed

log = logging.getLogger(__name__)

# Where callers have always found them (the loading rules live in loading.py).
__all__ = [
    "PIPELINE_CLASS",
    "SUPPORTED_MODELS",
    "SUPPORTED_PIPELINE_CLASSES",
    "DiffusersEditor",
    "load_pipeline",
    "public_model_id",
    "resolve_device",
]

LOCK_POLL_SECONDS = 0.01
"""How often an edit waiting for the lock looks at its cancel event."""

_LIGHTNING_SETTING: Mapping[SpeedPreset, str] = {
    "quality": "",
    "fast": "LIGHTNING_8STEP_LORA",
    "fastest": "LIGHTNING_4STEP_LORA",
}


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """``DiffusersEditor.prepare``'s answer: the checked edit, its preset and its prepared inputs."""

    edit: PreparedEdit
    speed: SpeedPreset
    inputs: PreparedInputs
    scheduler: Any
    """A fresh scheduler of the preset's config, for this edit alone."""
    seconds: float
    """How long the preparation took (the result's ``preprocessing``)."""


class DiffusersEditor:
    """``ports.Editor`` for Qwen-Image-Edit-2509. Thread-safe: edits run one at a time.

    Build it with ``load`` (the composition root passes the settings' values). ``edit`` blocks until the edit is done
    and raises ``InvalidInput`` (before touching the model), ``EditCancelled`` or
    ``ModelError`` (``out_of_memory``, ``nan_output``, ``model_error``); after any of
    them the editor stays usable.
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        model_id: str,
        revision: str | None = None,
        sizing: ModelSizing | None = None,
        memory: MemoryMode = "full",
        quantization: Quantization | None = None,
        speed: SpeedPreset = "quality",
        lightning: Mapping[SpeedPreset, LoraSource] | None = None,
        loras: Mapping[str, AllowedLora] | None = None,
        lora_cache_size: int = DEFAULT_LORA_CACHE_SIZE,
        accelerations: Accelerations | None = None,
    ) -> None:
        """Wrap an already loaded and placed pipeline (from ``load_pipeline``).

        ``lightning`` (preset → source) are loaded here, once, as pinned adapters; ``loras``
        is the allowlist of request LoRAs, loaded on first use and kept at most
        ``lora_cache_size`` at a time; ``accelerations`` are applied after the adapters.
        """
        if not isinstance(pipeline, InstrumentedPipeline):
            raise TypeError(
                "DiffusersEditor needs a pipeline from processor.adapters.diffusers.engine.load_pipeline"
            )
        self._pipe: InstrumentedPipeline | None = pipeline
        self._dtype = str(pipeline.transformer.dtype).removeprefix("torch.")
        self._closed = False
        self._model_id = model_id
        self._revision = revision
        self._sizing = sizing or ModelSizing()
        self._memory = memory
        self._quantization = quantization if memory == "quantized" else None
        self._device = torch.device(pipeline._execution_device)
        self._lock = threading.Lock()
        self._speed: SpeedPreset = check_speed(speed) or "quality"
        self._transformer_config = pipeline.transformer.config
        self._scheduler_class = type(pipeline.scheduler)
        self._model_scheduler_config = dict(pipeline.scheduler.config)
        self._lightning: dict[SpeedPreset, LoraSource] = {}
        for preset, source in (lightning or {}).items():
            if preset not in LIGHTNING_STEPS:
                raise ConfigurationError(f"no Lightning LoRA for the {preset!r} preset")
            if LIGHTNING_ADAPTERS[preset] not in getattr(pipeline.transformer, "peft_config", {}):
                forget_applied(pipeline)
                source.load_into(pipeline, LIGHTNING_ADAPTERS[preset])
            self._lightning[preset] = source
        if self._speed != "quality" and self._speed not in self._lightning:
            raise ConfigurationError(
                f"SPEED={self._speed} needs its Lightning LoRA ({_LIGHTNING_SETTING[self._speed]})"
            )
        self._adapters = AdapterCache(
            pipeline, loras or {}, max_resident=lora_cache_size, pinned=LIGHTNING_ADAPTERS.values()
        )
        self._accelerations = accelerations or Accelerations()
        if self._accelerations.fp8 and loras:
            raise ConfigurationError(
                "FP8=true with request LORAS is not supported (LoRA layers on float8 weights)"
            )
        self._preview_weights: torch.Tensor | None = None
        install_prepared_inputs(pipeline)
        apply_adapters(pipeline, ())  # the base model until an edit asks for more
        apply_accelerations(pipeline, self._accelerations, self._device)
        pipeline.pin_placement(stateful_hooks=self._accelerations.step_cache)

    @classmethod
    def load(
        cls,
        model_id: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        device: DeviceChoice | torch.device = "auto",
        memory: MemoryMode = "full",
        quantization: Quantization = "nf4",
        warmup: bool = False,
        speed: SpeedPreset = "quality",
        lightning: Mapping[SpeedPreset, LoraSource] | None = None,
        loras: Mapping[str, AllowedLora] | None = None,
        lora_cache_size: int = DEFAULT_LORA_CACHE_SIZE,
        accelerations: Accelerations | None = None,
    ) -> DiffusersEditor:
        """Load a ``QwenImageEditPlusPipeline`` (hub id or local folder) and optionally warm it up.

        bfloat16 on CUDA, float32 on CPU. ``memory`` (see ``Settings.memory_mode``): ``full``,
        ``offload`` (CUDA only: each model on the GPU only while it runs) or ``quantized``
        (the transformer's linear weights in ``quantization``, the rest offloaded on CUDA).
        Raises ``ConfigurationError`` when the model cannot be loaded that way.
        """
        started = time.perf_counter()
        target = resolve_device(device)
        check_accelerations(accelerations or Accelerations(), target)  # before minutes of loading
        pipeline = load_pipeline(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            device=target,
            memory=memory,
            quantization=quantization,
        )
        editor = cls(
            pipeline,
            model_id=str(model_id),
            revision=revision,
            sizing=ModelSizing.for_model(model_id),
            memory=memory if target.type == "cuda" or memory == "quantized" else "full",
            quantization=quantization,
            speed=speed,
            lightning=lightning,
            loras=loras,
            lora_cache_size=lora_cache_size,
            accelerations=accelerations,
        )
        log.info(
            "model loaded",
            extra={**editor.describe(), "seconds": round(time.perf_counter() - started, 3)},
        )
        if warmup:
            editor.warm_up()
        return editor

    @classmethod
    def from_components(
        cls,
        components: Mapping[str, Any],
        *,
        model_id: str,
        sizing: ModelSizing | None = None,
        **options: Any,
    ) -> DiffusersEditor:
        """An editor over already built components (benchmarks build random full-size weights on the
        GPU); the engine's fixes are installed as ``load_pipeline`` installs them. Editors built from
        the same components share their weights (and their loaded adapters)."""
        # Components of another editor's pipeline come with its answering processor.
        pipeline = InstrumentedPipeline(
            **{name: unwrapped(component) for name, component in components.items()}
        )
        install_mrope_fix(pipeline.text_encoder)
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, model_id=model_id, sizing=sizing, **options)

    @property
    def pipeline(self) -> Any:
        """The underlying diffusers pipeline, for diagnostics and tests. Not thread-safe to use."""
        return self._pipe

    @property
    def sizing(self) -> ModelSizing:
        return self._sizing

    def describe(self) -> Mapping[str, Any]:
        """Model id, revision, device, dtype and library versions: recorded with every result."""
        return {
            "engine": "diffusers",
            "model_id": public_model_id(self._model_id),
            "revision": self._revision,
            "device": str(self._device),
            "dtype": self._dtype,
            "memory_mode": self._memory,
            "quantization": self._quantization,
            "zero_cond_t": bool(getattr(self._transformer_config, "zero_cond_t", False)),
            "speed_default": self._speed,
            "speeds": ["quality", *self._lightning],
            "lightning": {preset: source.describe() for preset, source in self._lightning.items()},
            "loras_allowed": sorted(self._adapters.allowlist),
            "lora_cache_size": self._adapters.max_resident,
            **self._accelerations.describe(),
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    def output_size(
        self, image_sizes: Sequence[tuple[int, int]], width: int | None = None, height: int | None = None
    ) -> tuple[int, int]:
        """The ``(width, height)`` an edit of images of these sizes gives; raises ``InvalidInput``."""
        return output_size(list(image_sizes), self._sizing, width, height)

    @property
    def adapters(self) -> AdapterCache:
        """The request-LoRA cache (diagnostics and tests)."""
        return self._adapters

    def warm_up(self) -> float:
        """Run one short edit per available preset so the first real one does not pay for lazy
        initialisation (or, with ``COMPILE``, for compilation); returns seconds."""
        started = time.perf_counter()
        with self._lock:
            self._projection()  # the previews' colour map, fitted once from this model's VAE
        gradient = Image.linear_gradient("L").resize((256, 256)).convert("RGB")
        for speed in ("quality", *self._lightning):
            self.edit(
                [gradient], EditParams(prompt="warm-up", num_inference_steps=MIN_STEPS, seed=0, speed=speed)
            )
        seconds = time.perf_counter() - started
        log.info("warm-up done", extra={"seconds": round(seconds, 3)})
        return seconds

    def prepare(self, images: Sequence[Image.Image], params: EditParams) -> PreparedRun:
        """The edit's CPU work, without the lock: checks (``InvalidInput``), size, seed, canvas, and the
        pipeline's preprocessing of the inputs and prompts. Hand it to ``edit(..., prepared=)``."""
        prepared = prepare_edit(images, params, self._sizing)
        speed = self._check_speed(params)
        pipe = self._pipe
        if pipe is None:
            raise ConfigurationError("the editor was closed")
        started = time.perf_counter()
        _, cfg_scale, scheduler_config, _ = preset_plan(
            speed,
            steps=params.num_inference_steps,
            true_cfg_scale=params.true_cfg_scale,
            model_scheduler_config=self._model_scheduler_config,
        )
        inputs = prepare_inputs(
            pipe,
            prepared.images,
            [params.prompt, *([params.negative_prompt or " "] if cfg_scale > 1 else [])],
            vae_image_area=self._sizing.vae_image_area,
            condition_image_area=self._sizing.condition_image_area,
        )
        # A new scheduler per edit, from a frozen config: no state crosses requests.
        scheduler = self._scheduler_class.from_config(scheduler_config)
        return PreparedRun(prepared, speed, inputs, scheduler, time.perf_counter() - started)

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
        prepared: PreparedRun | None = None,
    ) -> EditResult:
        """Edit 0 to 3 images (none: a base canvas); see the class docstring for what it raises.

        Only device work runs under the lock: the inputs are resized, preprocessed and run through
        the Qwen2-VL processor before it (``prepare``, or ``prepared`` when the caller did it already
        for these images and parameters), and the output leaves it as 8-bit pixels, made into a
        picture after it."""
        run = prepared if prepared is not None else self.prepare(images, params)
        edit, speed, inputs, preprocessing = run.edit, run.speed, run.inputs, run.seconds
        _raise_if_cancelled(cancel, "before it started")
        with self._locked(cancel):
            plan = self._plan(speed, params)
            pixels, timings = self._run(
                inputs,
                run.scheduler,
                params,
                plan,
                edit.seed,
                edit.width,
                edit.height,
                on_progress,
                cancel,
                previews,
            )
        started = time.perf_counter()
        image = Image.fromarray(pixels.numpy())
        timings["preprocessing"] = preprocessing
        timings["postprocessing"] = time.perf_counter() - started
        timings["total"] += preprocessing + timings["postprocessing"]
        if inputs.misses:
            log.warning("inputs not prepared before the lock: %s", ", ".join(sorted(set(inputs.misses))))
        return EditResult(
            image=image,
            seed=edit.seed,
            width=image.width,
            height=image.height,
            num_inference_steps=plan.steps,
            timings=timings,
            model=self.describe(),
            base=edit.base,
            run=plan.record(),
        )

    @contextmanager
    def _locked(self, cancel: threading.Event | None) -> Iterator[None]:
        """The lock, for an edit: a cancel while it waits ends the wait within ``LOCK_POLL_SECONDS``
        (an edit prepared ahead waits here for the one before it, and may be cancelled meanwhile)."""
        while not self._lock.acquire(timeout=LOCK_POLL_SECONDS):
            _raise_if_cancelled(cancel, "while it waited for the model")
        try:
            _raise_if_cancelled(cancel, "while it waited for the model")
            yield
        finally:
            self._lock.release()

    def _check_speed(self, params: EditParams) -> SpeedPreset:
        """The preset this edit runs; ``InvalidInput`` for an unavailable preset or LoRA (before the lock)."""
        speed = check_speed(params.speed) or self._speed
        if speed != "quality" and speed not in self._lightning:
            raise InvalidInput(
                f"speed {speed!r} is not available here: the operator has not configured "
                f"{_LIGHTNING_SETTING[speed]}",
                reason=ReasonCode.SPEED_UNAVAILABLE,
            )
        self._adapters.check(check_loras(params.loras))
        return speed

    def _plan(self, speed: SpeedPreset, params: EditParams) -> RunPlan:
        """Under the lock: load the request's LoRAs if needed and say what runs."""
        steps, cfg_scale, scheduler_config, lightning = preset_plan(
            speed,
            steps=params.num_inference_steps,
            true_cfg_scale=params.true_cfg_scale,
            model_scheduler_config=self._model_scheduler_config,
        )
        try:
            active = self._adapters.activate(params.loras)
        except ConfigurationError as exc:  # an allowlisted file that cannot be loaded now
            raise ModelError(str(exc), reason=ReasonCode.LORA_UNAVAILABLE) from exc
        adapters = ([(lightning, 1.0)] if lightning else []) + [(name, scale) for name, scale, _ in active]
        return RunPlan(
            speed=speed,
            steps=steps,
            true_cfg_scale=cfg_scale,
            scheduler_config=scheduler_config,
            adapters=tuple(adapters),
            loras=tuple(record for _, _, record in active),
        )

    def preview_projection(self) -> torch.Tensor:
        """The ``(z_dim + 1, 3)`` latent-to-RGB map of previews (fitted on first use, then cached)."""
        with self._lock:
            return self._projection()

    def _projection(self) -> torch.Tensor:
        """Under the lock."""
        if self._preview_weights is None:
            pipe = self._pipe
            if pipe is None:
                raise ConfigurationError("the editor was closed")
            started = time.perf_counter()
            try:
                self._preview_weights = fit_projection(pipe)
            finally:
                pipe.maybe_free_model_hooks()  # an offloaded VAE goes back to the CPU
            log.debug("preview projection fitted", extra={"seconds": round(time.perf_counter() - started, 3)})
        return self._preview_weights

    def close(self) -> None:
        """Drop the model so its memory can be freed. Idempotent; edits then refuse."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pipe = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _run(
        self,
        inputs: PreparedInputs,
        scheduler: Any,
        params: EditParams,
        plan: RunPlan,
        seed: int,
        width: int,
        height: int,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None,
        previews: PreviewSink | None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Under the lock: the pipeline call and the decode; the output as 8-bit pixels on the CPU."""
        pipe = self._pipe
        if pipe is None:
            raise ConfigurationError("the editor was closed")
        run = Run(self._synchronize, plan.steps, on_progress, cancel)
        if previews is not None and previews.every_steps > 0:
            try:
                weights = self._projection()
            except Exception:
                log.exception("previews are off for this edit: the projection could not be fitted")
            else:
                worker = PreviewWorker(previews, plan.steps)  # closed in the finally below
                run.previews = RunPreviews(
                    previews, worker, weights, height, width, int(pipe.vae_scale_factor)
                )
        cfg = plan.true_cfg_scale > 1
        guidance_embeds = bool(pipe.transformer.config.guidance_embeds)
        failure: Exception | None = None
        out_of_memory = False
        started = time.perf_counter()
        try:
            with sizing_gate.applied(self._sizing), torch.inference_mode(), using(inputs):
                pipe.scheduler = scheduler  # made for this edit alone (``prepare``)
                apply_adapters(pipe, plan.adapters)
                reset_step_cache(pipe, self._accelerations)
                pipe.attach_run(run)
                latents = pipe(
                    image=inputs.images,
                    prompt=params.prompt,
                    # Always a negative prompt with CFG: without one the pipeline silently skips CFG.
                    negative_prompt=(params.negative_prompt or " ") if cfg else None,
                    true_cfg_scale=plan.true_cfg_scale,
                    height=height,
                    width=width,
                    num_inference_steps=plan.steps,
                    # Qwen-Image checkpoints are not guidance-distilled: the value would only be logged and ignored.
                    guidance_scale=params.guidance_scale if guidance_embeds else None,
                    generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="latent",
                    callback_on_step_end=run.on_step_end,
                ).images
                pixels = self._decode(latents, width, height, run)
        except Cancelled as exc:
            when = f"after step {exc.step} of {plan.steps}" if exc.step else "before denoising"
            failure = EditCancelled(f"cancelled {when}")
        except NonFinite as exc:
            failure = ModelError(
                f"the model produced NaN or infinite values ({exc.where})", reason=ReasonCode.NAN_OUTPUT
            )
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # handled below, once this frame no longer holds the tensors
        except RuntimeError as exc:
            failure = ModelError(f"{type(exc).__name__}: {exc}", reason=ReasonCode.MODEL_ERROR)
            failure.__cause__ = exc
        finally:
            if run.previews is not None:
                run.previews.worker.close()  # nothing is delivered after the edit
            pipe.attach_run(None)
            reset_step_cache(pipe, self._accelerations)
            # Puts offloaded models back on the CPU after a run that stopped half-way.
            pipe.maybe_free_model_hooks()
        if out_of_memory:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise ModelError(
                f"out of GPU memory for {len(inputs.images)} image(s) at {width}×{height}",
                reason=ReasonCode.OUT_OF_MEMORY,
            )
        if failure is not None:
            raise failure
        run.timings["total"] = time.perf_counter() - started
        return pixels, run.timings

    def _decode(self, latents: torch.Tensor, width: int, height: int, run: Run) -> torch.Tensor:
        """The pipeline's own final block (unpack, de-normalise, VAE decode), timed, and its
        postprocessing up to 8-bit pixels, on the device: ``(height, width, 3)`` uint8 on the CPU,
        the bits ``image_processor.postprocess(..., "pil")`` would give (``to_pixels``)."""
        pipe = self._pipe
        assert pipe is not None  # under the lock, after ``_run`` checked it
        vae = pipe.vae
        with run.stage("decoding"):
            latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor).to(vae.dtype)
            shape = (1, vae.config.z_dim, 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
            inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(
                latents.device, latents.dtype
            )
            latents = latents / inverse_std + mean  # written as the pipeline writes it, for identical bits
            decoded = vae.decode(latents, return_dict=False)[0][:, :, 0]
            return to_pixels(
                pipe.image_processor, decoded, check=lambda t: run.check_finite(t, "decoded image")
            )

    def _synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)


def to_pixels(
    image_processor: Any, decoded: torch.Tensor, check: Callable[[torch.Tensor], None] | None = None
) -> torch.Tensor:
    """``image_processor.postprocess(decoded, output_type="pil")``'s pixels of the first image, made on
    the tensor's device and copied to the CPU as uint8 (a quarter of float32's bytes): the same
    de-normalisation, then ``round(x * 255)`` in float32, as ``numpy_to_pil`` does (both round half to
    even). ``check`` sees the decoded tensor first (the NaN check). All of it is device work."""
    if check is not None:
        check(decoded)
    denormalized: torch.Tensor = image_processor.postprocess(decoded, output_type="pt")
    scaled = denormalized[0].permute(1, 2, 0).float() * 255
    return scaled.round().to(torch.uint8).cpu()


def _raise_if_cancelled(cancel: threading.Event | None, when: str) -> None:
    if cancel is not None and cancel.is_set():
        raise EditCancelled(f"cancelled {when}")
