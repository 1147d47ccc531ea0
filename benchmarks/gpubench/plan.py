"""What the benchmark runs, in which order, and what each step should cost in seconds and memory.

The order is by value, so that a run cut short by its deadline still answers the first questions:

1. ``stock``: ``QwenImageEditPlusPipeline.__call__`` as the model card calls it (40 steps, true CFG
   4, negative prompt " "), one timed run after a 2-step warm-up; also a short 4-step call, timed
   again at the end to catch drift. The baseline of every ratio.
2. ``fast``: the engine, Lightning 8 steps, eager (PEFT LoRA wrappers active).
3. ``fast+compile``: regional compile and the attention backend (lossless; error vs ``fast``).
4. ``fastest+compile``: Lightning 4 steps, same accelerations.
5. ``fast+compile+fp8``: FP8 on the block linears (error vs ``fast+compile``, same seed); the bf16
   weights go to host memory first and come back after, so later variants run on bf16.
6. ``quality+compile``: the engine's 40-step CFG edit, lossless accelerations (error vs ``stock``).
7. ``fast fused``: the 8-step LoRA fused into the weights and its PEFT wrappers removed, eager:
   what the wrappers cost against ``fast`` (error vs ``fast``: bf16 rounding of the fusion).

Build, LoRA creation, every compile and the FP8 swap are charged to the variant that needs them.
Estimates before the stock run come from ``Costs.full_size`` / ``Costs.tiny`` (est.); the stock run
then calibrates the per-forward and per-image times.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from processor.adapters.diffusers.accelerate import FP8_KEEP_BF16, Accelerations, fp8_filter

Kind = Literal["stock", "engine", "fused"]
GIB = 2**30

STOCK, FAST, FAST_COMPILE, FASTEST_COMPILE, FAST_FP8, QUALITY_COMPILE, FAST_FUSED = (
    "stock",
    "fast",
    "fast+compile",
    "fastest+compile",
    "fast+compile+fp8",
    "quality+compile",
    "fast fused",
)
SHORT_STOCK_STEPS = 4
"""The short stock call timed at the start and again at the end (drift)."""
WARM_UP_STEPS = 2


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    kind: Kind
    speed: Literal["quality", "fast", "fastest"]
    runs: int
    accelerations: Accelerations = field(default_factory=Accelerations)
    reference: str | None = None
    """The variant whose final latents (same seed) this one's error is measured against."""
    quality_steps: int = 40
    """Steps of a ``quality`` variant: the model card's 40 (the CPU check of the script runs fewer)."""

    @property
    def steps(self) -> int:
        return {"quality": self.quality_steps, "fast": 8, "fastest": 4}[self.speed]

    @property
    def forwards(self) -> int:
        """Transformer forwards per image: two per step with true CFG, one per Lightning step."""
        return self.steps * (2 if self.speed == "quality" else 1)

    @property
    def warm_up_forwards(self) -> int:
        """The warm-up edit: 2 steps of ``quality`` (Lightning presets always run their own steps)."""
        return WARM_UP_STEPS * 2 if self.speed == "quality" else self.forwards


def build_plan(*, attention: str, runs: int, quality_runs: int, quality_steps: int = 40) -> list[Variant]:
    lossless = Accelerations(compile=True, attention_backend=attention)
    return [
        Variant(STOCK, "stock", "quality", quality_runs, quality_steps=quality_steps),
        Variant(FAST, "engine", "fast", runs),
        Variant(FAST_COMPILE, "engine", "fast", runs, lossless, reference=FAST),
        Variant(FASTEST_COMPILE, "engine", "fastest", runs, lossless),
        Variant(FAST_FP8, "engine", "fast", runs, replace(lossless, fp8=True), reference=FAST_COMPILE),
        Variant(
            QUALITY_COMPILE,
            "engine",
            "quality",
            quality_runs,
            lossless,
            reference=STOCK,
            quality_steps=quality_steps,
        ),
        Variant(FAST_FUSED, "fused", "fast", runs, reference=FAST),
    ]


# --- Time --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Costs:
    """Seconds each piece of work is expected to take."""

    per_forward: float
    per_image: float
    """Everything of an edit but the denoising loop: encoders, VAE encode and decode, pipeline."""
    build: float
    loras: float
    first_compile: float
    recompile: float
    fp8_swap: float
    """Host copy of the bf16 weights, quantization, and the copy back."""
    fuse: float
    calibrated: bool = False

    @classmethod
    def full_size(cls, forward_flop: float, *, tflops: float, host_copy_bytes: int) -> Costs:
        """The full-size model on an H100/H200 (est.): ``tflops`` achieved in bf16 (about 400: the
        published Qwen-Image H100 times against this model's FLOPs); encoders, VAE and decode about
        1.5 s (sglang's H100 CI: 1.05 s VL encode, 0.10 s VAE encode, 0.04 s decode), 2 s with the
        second prompt encode of CFG; LoRA creation as measured on ``meta`` here (20 s, 2 CPU cores);
        compile times guessed for a 16-core host; host copies at 5 GB/s each way."""
        return cls(
            per_forward=forward_flop / (tflops * 1e12),
            per_image=2.0,
            build=30.0,
            loras=20.0,
            first_compile=75.0,
            recompile=40.0,
            fp8_swap=15.0 + 2 * host_copy_bytes / 5e9,
            fuse=15.0,
        )

    @classmethod
    def tiny(cls, *, compile_backend: str) -> Costs:
        """The tiny model on 2 CPU cores (measured here, rounded up); inductor writes and builds C++."""
        inductor = compile_backend == "inductor"
        return cls(
            per_forward=0.01,
            per_image=0.1,
            build=2.0,
            loras=1.0,
            first_compile=90.0 if inductor else 10.0,
            recompile=60.0 if inductor else 5.0,
            fp8_swap=1.0,
            fuse=1.0,
        )

    def calibrate(self, stock: Mapping[str, Any]) -> Costs:
        """Per-forward and per-image times from the stock run's medians."""
        stages = stock["stages"]
        forwards = stock["forwards"]
        if not forwards or not stages.get("denoising"):
            return self
        return replace(
            self,
            per_forward=stages["denoising"] / forwards,
            per_image=max(stages["total"] - stages["denoising"], 0.0),
            calibrated=True,
        )


@dataclass(slots=True)
class State:
    """What earlier steps already paid for."""

    loras_loaded: bool = False
    compiled: bool = False


def estimate(variant: Variant, costs: Costs, state: State) -> float:
    """Seconds from starting ``variant`` to its result line, set-up included."""
    image = variant.forwards * costs.per_forward + costs.per_image
    if variant.kind == "stock":
        short = (WARM_UP_STEPS + SHORT_STOCK_STEPS) * 2 * costs.per_forward + 2 * costs.per_image
        return short + variant.runs * image
    seconds = variant.warm_up_forwards * costs.per_forward + costs.per_image + variant.runs * image
    if variant.kind == "fused":
        return seconds + costs.fuse + (0.0 if state.loras_loaded else costs.loras)
    if variant.speed != "quality" and not state.loras_loaded:
        seconds += costs.loras
    if variant.accelerations.compile:
        seconds += costs.recompile if state.compiled else costs.first_compile
    if variant.accelerations.fp8:
        seconds += costs.fp8_swap
    return seconds


def after(variant: Variant, state: State) -> State:
    """The state once ``variant`` has run (or failed half-way: its set-up may have happened)."""
    if variant.kind == "fused":
        return State(loras_loaded=False, compiled=state.compiled)
    return State(
        loras_loaded=state.loras_loaded or (variant.kind == "engine" and variant.speed != "quality"),
        compiled=state.compiled or variant.accelerations.compile,
    )


def drift_estimate(costs: Costs) -> float:
    return SHORT_STOCK_STEPS * 2 * costs.per_forward + costs.per_image + 5.0  # + unload LoRAs


def timeline(plan: list[Variant], costs: Costs, *, start: float, deadline: float) -> list[dict[str, Any]]:
    """Each variant's estimate and when it would end, and which the deadline would skip."""
    rows, clock, state = [], start, State()
    reserve = drift_estimate(costs)
    for variant in plan:
        seconds = estimate(variant, costs, state)
        fits = clock + seconds + reserve <= deadline
        if fits:
            clock += seconds
            state = after(variant, state)
        rows.append(
            {
                "variant": variant.name,
                "estimate_s": round(seconds, 1),
                "ends_at_s": round(clock, 1),
                "fits": fits,
            }
        )
    return rows


# --- FLOPs -------------------------------------------------------------------------------------------


def forward_flop(config: Any, image_tokens: int, text_tokens: int) -> float:
    """Matmul FLOPs of one transformer forward: 24·d² per token per block (the attention projections,
    4d², and the MLP, 8d², of the token's own stream, at 2 FLOPs per multiply-add) plus 4·s²·d per block
    for attention over the joint sequence s."""
    dim = int(config.num_attention_heads * config.attention_head_dim)
    layers = int(config.num_layers)
    tokens = image_tokens + text_tokens
    return 24.0 * dim * dim * layers * tokens + 4.0 * tokens * tokens * dim * layers


def fp8_share(transformer: Any) -> dict[str, Any]:
    """Which block linears FP8 converts, and the share of each stream's per-token linear FLOPs they
    carry (modulation runs once per image, not per token, and is left out of the shares)."""
    flops = {"image": [0.0, 0.0], "text": [0.0, 0.0]}  # [fp8, all]
    converted, kept = 0, 0
    for name, module in transformer.named_modules():
        parts = name.split(".")
        blocks = len(parts) > 2 and parts[0] == "transformer_blocks"
        if not blocks or not isinstance(module, torch.nn.Linear) or ".lora_" in name:
            continue
        inside = ".".join(parts[2:]).removesuffix(".base_layer")
        chosen = fp8_filter(module, name)
        converted, kept = converted + chosen, kept + (not chosen)
        stream = _stream(inside)
        if stream is None:
            continue
        cost = 2.0 * module.in_features * module.out_features
        flops[stream][1] += cost
        flops[stream][0] += cost if chosen else 0.0
    return {
        "converted_layers": converted,
        "bf16_layers": kept,
        "kept_in_bf16": list(FP8_KEEP_BF16),
        "share_of_linear_flops": {
            stream: round(fp8 / total, 4) if total else 0.0 for stream, (fp8, total) in flops.items()
        },
    }


def _stream(inside: str) -> str | None:
    if inside.startswith(("img_mlp", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out")):
        return "image"
    if inside.startswith(("txt_mlp", "attn.add_", "attn.to_add_out")):
        return "text"
    return None  # img_mod / txt_mod: once per image


# --- Memory ------------------------------------------------------------------------------------------


FULL_SIZE_WEIGHT_BYTES = 57_698_921_222
"""Parameters and buffers of the full-size text encoder, transformer and VAE in bf16 (28.85 B
parameters, 53.74 GiB): what the dry run measures on ``meta``, checked equal by a test."""
FULL_SIZE_FP8_BYTES = 22_655_508_480
"""bf16 bytes of the 660 block linears FP8 converts: the host copy that lets later variants run on bf16."""
ACTIVATIONS_FULL = 7 * GIB
"""Activations and workspace of a 1024² edit at full size: sglang PR #20395 logged a 64.44 GB peak for
this architecture at 1024² with 57.7 GB of bf16 weights resident (6.7 GB over them)."""
CUDA_CONTEXT = 1.5 * GIB
"""The CUDA context, cuBLAS/cuDNN workspaces and allocator slack (est.)."""


def lora_bytes(transformer_config: Any, rank: int) -> int:
    """Bytes of one bf16 LoRA of ``rank`` on every block linear."""
    from gpubench.model import block_linear_shapes

    dim = int(transformer_config.num_attention_heads * transformer_config.attention_head_dim)
    per_block = sum(rank * (fan_in + fan_out) for fan_in, fan_out in block_linear_shapes(dim).values())
    return per_block * int(transformer_config.num_layers) * 2


def memory_plan(*, weights: int, loras: int, tiny: bool, capacity: int, fp8_host_copy: int) -> dict[str, Any]:
    activations = 0 if tiny else ACTIVATIONS_FULL
    context = 0 if tiny else CUDA_CONTEXT
    peak = weights + loras + activations + context
    return {
        "weights_gib": round(weights / GIB, 2),
        "loras_gib": round(loras / GIB, 2),
        "activations_gib": round(activations / GIB, 2),
        "context_gib": round(context / GIB, 2),
        "peak_gib": round(peak / GIB, 2),
        "capacity_gib": round(capacity / GIB, 2),
        "fits": peak <= capacity,
        "fp8_host_copy_gib": round(fp8_host_copy / GIB, 2),
        "peak_bytes": int(peak),
        "fp8_host_copy_bytes": int(fp8_host_copy),
    }
