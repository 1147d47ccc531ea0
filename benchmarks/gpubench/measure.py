"""Measuring one variant: a probe on the transformer and the VAE, the stock call, an engine edit, the
fused-LoRA edit, the FP8 weight swap, and torch.compile's counters and recompile reasons."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from gpubench.model import NEGATIVE_PROMPT, PROMPT
from gpubench.plan import SHORT_STOCK_STEPS, WARM_UP_STEPS, Variant, forward_flop
from processor.adapters.diffusers.accelerate import compile_counters, fp8_layers, is_float8
from processor.adapters.diffusers.loras import LoraSource
from processor.adapters.diffusers.run import sizing_gate
from processor.domain.request import EditParams
from processor.domain.sizing import ModelSizing

GIB = 2**30


@dataclass
class Bench:
    """What every variant runs on: one set of components, one input, one device."""

    components: dict[str, Any]
    device: torch.device
    sizing: ModelSizing
    image: Image.Image
    peak_tflops: float
    tiny: bool
    lightning: dict[str, LoraSource] = field(default_factory=dict)
    latents: dict[str, torch.Tensor] = field(default_factory=dict)
    """Final latents of each finished variant's last timed run (seed 0), on the host."""
    compiled_once: bool = False
    """Whether a variant compiled already (later compiles are recompiles of the same blocks)."""

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def memory(self) -> dict[str, float] | None:
        if not self.cuda:
            return None
        return {
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated(self.device) / GIB, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(self.device) / GIB, 2),
            "allocated_gib": round(torch.cuda.memory_allocated(self.device) / GIB, 2),
        }


class Probe:
    """The transformer's forwards (sequence lengths and FLOPs of each, by branch), when denoising
    starts, and the final latents (what the VAE decodes)."""

    def __init__(self, pipeline: Any, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.config = pipeline.transformer.config
        self.first_forward: float | None = None
        self.latents: torch.Tensor | None = None
        self.branches: dict[tuple[int, int], int] = {}
        self.flop = 0.0
        self._handle = pipeline.transformer.register_forward_pre_hook(self._pre, with_kwargs=True)
        self._vae = pipeline.vae
        self._decode = self._vae.decode

        def decode(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.latents = z.detach().float().cpu()
            return self._decode(z, *args, **kwargs)

        self._vae.decode = decode

    def reset(self) -> None:
        self.first_forward, self.latents, self.branches, self.flop = None, None, {}, 0.0

    @property
    def forwards(self) -> int:
        return sum(self.branches.values())

    def _pre(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.first_forward is None:
            self.sync()
            self.first_forward = time.perf_counter()
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states")
        shape = (
            (int(hidden.shape[1]), int(text.shape[1])) if hidden is not None and text is not None else (0, 0)
        )
        self.branches[shape] = self.branches.get(shape, 0) + 1
        self.flop += forward_flop(self.config, *shape)  # each branch at its own text length

    def close(self) -> None:
        self._handle.remove()
        self._vae.decode = self._decode


def figures(samples: Sequence[Mapping[str, float]], probe: Probe, steps: int, bench: Bench) -> dict[str, Any]:
    """Medians of the timed runs and what they mean against the compute floor."""
    stages = {stage: statistics.median(sample[stage] for sample in samples) for stage in samples[0]}
    denoising = stages.get("denoising", 0.0)
    floor = probe.flop / (bench.peak_tflops * 1e12)
    return {
        "runs": len(samples),
        "seconds_per_image": round(stages["total"], 4),
        "seconds_per_step": round(denoising / steps, 5),
        "stages": {stage: round(seconds, 4) for stage, seconds in stages.items()},
        "all_totals": [round(sample["total"], 4) for sample in samples],
        "forwards": probe.forwards,
        "sequences": [
            {"image_tokens": image, "text_tokens": text, "forwards": count}
            for (image, text), count in probe.branches.items()
        ],
        "denoising_tflop": round(probe.flop / 1e12, 3),
        "achieved_tflops": round(probe.flop / denoising / 1e12, 2) if denoising else None,
        "floor_seconds": round(floor, 4),
        "fraction_of_floor": round(floor / denoising, 3) if denoising else None,
    }


# --- Stock -------------------------------------------------------------------------------------------


def run_stock(bench: Bench, variant: Variant) -> dict[str, Any]:
    """The model card's call on a plain ``QwenImageEditPlusPipeline``: a 2-step warm-up, a timed
    4-step call (the drift reference), then ``variant.runs`` timed 40-step calls."""
    from diffusers import QwenImageEditPlusPipeline

    pipeline = QwenImageEditPlusPipeline(**bench.components)
    pipeline.set_progress_bar_config(disable=True)
    probe = Probe(pipeline, bench.sync)
    try:
        started = time.perf_counter()
        stock_call(bench, pipeline, probe, WARM_UP_STEPS)
        warm_up = time.perf_counter() - started
        short = stock_call(bench, pipeline, probe, SHORT_STOCK_STEPS)
        bench.reset_peak()
        samples = [stock_call(bench, pipeline, probe, variant.steps) for _ in range(variant.runs)]
        report = {
            "warm_up_seconds": round(warm_up, 3),
            "short_call": short,
            **figures(samples, probe, variant.steps, bench),
        }
        if probe.latents is not None:
            bench.latents[variant.name] = probe.latents
    finally:
        probe.close()
    return report


def stock_call(bench: Bench, pipeline: Any, probe: Probe, steps: int) -> dict[str, float]:
    """One timed call as the model card makes it (the tiny model gets the engine's tiny sizing and an
    explicit 64² output; full size keeps the pipeline's own ≈1 MP choice). CPU noise, as the engine."""
    size = {"height": 64, "width": 64} if bench.tiny else {}
    probe.reset()
    ends: list[float] = []

    def on_step(_pipe: Any, _index: int, _t: Any, _tensors: dict[str, Any]) -> dict[str, Any]:
        bench.sync()
        ends.append(time.perf_counter())
        return {}

    bench.sync()
    started = time.perf_counter()
    with sizing_gate.applied(bench.sizing), torch.inference_mode():
        pipeline(
            image=[bench.image],
            prompt=PROMPT,
            negative_prompt=NEGATIVE_PROMPT,
            true_cfg_scale=4.0,
            num_inference_steps=steps,
            generator=torch.Generator("cpu").manual_seed(0),
            callback_on_step_end=on_step,
            **size,
        )
    bench.sync()
    finished = time.perf_counter()
    assert probe.first_forward is not None
    return {
        "before_denoising": probe.first_forward - started,
        "denoising": ends[-1] - probe.first_forward,
        "after_denoising": finished - ends[-1],
        "total": finished - started,
    }


# --- The engine --------------------------------------------------------------------------------------


def run_engine(
    bench: Bench, editor: Any, variant: Variant, params: EditParams | None = None
) -> dict[str, Any]:
    """One warm-up edit of the same shapes (compiles, when compiling), then ``variant.runs`` timed ones."""
    params = params or EditParams(
        prompt=PROMPT, seed=0, speed=variant.speed, num_inference_steps=variant.steps
    )
    probe = Probe(editor.pipeline, bench.sync)
    try:
        started = time.perf_counter()
        quality = params.speed == "quality"  # Lightning presets run their own steps whatever is asked
        editor.edit([bench.image], replace(params, num_inference_steps=WARM_UP_STEPS) if quality else params)
        warm_up_seconds = time.perf_counter() - started
        warm = compile_counters()
        bench.reset_peak()
        samples = []
        for _ in range(variant.runs):
            probe.reset()
            samples.append(dict(editor.edit([bench.image], params).timings))
        report = {
            "warm_up_seconds": round(warm_up_seconds, 3),
            # A frame compiled during the timed runs would be in their times: there must be none.
            "frames_compiled_in_timed_runs": compile_counters()["frames"] - warm["frames"],
            **figures(samples, probe, variant.steps, bench),
        }
        if probe.latents is not None:
            bench.latents[variant.name] = probe.latents
    finally:
        probe.close()
    return report


def latent_error(latents: torch.Tensor | None, reference: torch.Tensor | None) -> dict[str, float] | None:
    """How far final latents are from a reference of the same seed: mean absolute difference relative
    to the reference's mean magnitude, and the largest difference."""
    if latents is None or reference is None or latents.shape != reference.shape:
        return None
    difference = (latents - reference).abs()
    return {
        "relative_l1": float(f"{float(difference.mean() / reference.abs().mean()):.4g}"),
        "max_abs": float(f"{float(difference.max()):.4g}"),
    }


# --- FP8 ---------------------------------------------------------------------------------------------


@contextmanager
def bf16_weights_kept(transformer: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Copy the weights FP8 will replace to host memory, and put them back afterwards whatever
    happened, so the variants after FP8 run on the same bf16 weights. Yields what FP8 converted."""
    modules = dict(transformer.named_modules())
    names = fp8_layers(transformer)
    started = time.perf_counter()
    saved = {name: modules[name].weight.detach().to("cpu", copy=True) for name in names}
    info: dict[str, Any] = {"host_copy_seconds": round(time.perf_counter() - started, 3)}
    try:
        yield info
    finally:
        info["float8_layers"] = sum(is_float8(modules[name].weight) for name in names)  # what torchao did
        started = time.perf_counter()
        for name, weight in saved.items():
            device = modules[name].weight.device
            modules[name].weight = torch.nn.Parameter(weight.to(device), requires_grad=False)
        info["restore_seconds"] = round(time.perf_counter() - started, 3)


# --- Fused LoRA --------------------------------------------------------------------------------------


def fuse_fast_lora(components: Mapping[str, Any], adapter: str) -> None:
    """Fuse the 8-step adapter into the transformer's weights and remove every PEFT wrapper (what a
    deployment that fuses would run). The other adapters are gone afterwards."""
    from diffusers import QwenImageEditPlusPipeline

    pipeline = QwenImageEditPlusPipeline(**components)
    pipeline.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=[adapter])
    pipeline.unload_lora_weights()


def fused_components(components: Mapping[str, Any]) -> dict[str, Any]:
    """The components with the Lightning scheduler as the model's own: the engine's ``quality`` path
    at 8 steps and CFG 1 then runs exactly what ``fast`` runs, on the fused weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from processor.adapters.diffusers.presets import LIGHTNING_SCHEDULER_CONFIG

    return {
        **components,
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(LIGHTNING_SCHEDULER_CONFIG),
    }


FUSED_PARAMS = EditParams(prompt=PROMPT, seed=0, speed="quality", num_inference_steps=8, true_cfg_scale=1.0)


# --- torch.compile -----------------------------------------------------------------------------------


class CompileWatch(logging.Handler):
    """torch.compile's frames, graphs and graph breaks while a variant runs, and Dynamo's reasons for
    each recompile (its ``recompiles`` log artifact, switched on by the benchmark)."""

    LOGGER = "torch._dynamo.guards.__recompiles"

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: list[str] = []
        self.before: Mapping[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.reasons.append(record.getMessage()[:400])

    def __enter__(self) -> CompileWatch:
        self.before = compile_counters()
        logging.getLogger(self.LOGGER).addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)

    def report(self) -> dict[str, Any]:
        after = compile_counters()
        return {
            "frames_compiled": after["frames"] - self.before["frames"],
            "graphs": after["graphs"] - self.before["graphs"],
            "graph_breaks": after["graph_breaks"] - self.before["graph_breaks"],
            "recompile_reasons": self.reasons,
        }
