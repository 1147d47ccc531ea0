"""Opt-in accelerations of the transformer, applied once at start-up and reported in ``describe()``.

Lossless (the output stays the eager bf16 output up to kernel rounding):

* ``compile``: regional compilation, ``transformer.compile_repeated_blocks`` (the 60
  identical ``QwenImageTransformerBlock``s share one compiled graph), with
  ``dynamic=True`` so a new image size does not trigger a recompile storm; the warm-up
  compiles it. ``compile_counters`` reports graphs and recompiles.
* ``attention_backend``: diffusers' attention dispatcher (``native`` SDPA,
  ``_native_cudnn``, ``_native_flash``, ``flash`` / ``_flash_3`` where flash-attn is
  installed). An unavailable backend is a configuration error at start-up.

Lossy (documented error, see docs/speed.md):

* ``fp8``: torchao ``Float8DynamicActivationFloat8WeightConfig`` (dynamic per-row float8
  activations and weights) on the linears of the 60 transformer blocks, with sglang's validated
  Qwen-Image fallback preset left in bfloat16: the modulation linears (``img_mod``/``txt_mod``)
  and the image MLP's down projection ``img_mlp.net.2`` (sgl-project/sglang PR #23155, "after
  image-quality ablation"; ``docs/diffusion/quantization.md``); the linears outside the blocks
  (``img_in``, ``txt_in``, timestep embedder, ``norm_out``, ``proj_out``) and LoRA layers are not
  converted either. Needs CUDA with compute capability ≥ 8.9 (Ada, Hopper, Blackwell) and
  torchao: anything else is a ``ConfigurationError`` at start-up, never a crash at the first
  request. Whether FP8 is on is read from the weights themselves (``fp8_applied``).
* ``step_cache``: diffusers' own First-Block Cache (``FirstBlockCacheConfig``): when the
  first block's output changed by less than ``threshold`` (relative L1) since the last
  step, the remaining blocks reuse their cached residual. Chosen over cache-dit on
  evidence: it ships in diffusers 0.42.1 with a Qwen-Image registry entry and the docs'
  example is Qwen-Image; the pipeline's ``cache_context("cond"/"uncond")`` keeps CFG branches
  apart; it adds no dependency. Its state is reset before every edit.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from processor.domain.errors import ConfigurationError
from processor.domain.rules import DEFAULT_STEP_CACHE_THRESHOLD

log = logging.getLogger(__name__)

ATTENTION_BACKENDS = (
    "native",
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "_native_math",
    "flash",
    "_flash_3",
)
"""What ``ATTENTION_BACKEND`` accepts (diffusers ``AttentionBackendName`` values that need no hub download)."""
CUDA_ONLY_BACKENDS = ("_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3")
"""Backends whose kernels exist only on CUDA (SDPA would find no kernel at the first request otherwise)."""
FP8_BLOCKS = "transformer_blocks"
"""FP8 converts linears inside these blocks only."""
FP8_KEEP_BF16 = ("img_mod.1", "txt_mod.1", "img_mlp.net.2")
"""Block linears FP8 leaves in bfloat16 (sglang's Qwen-Image fallback preset, PR #23155)."""
FP8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True, slots=True)
class Accelerations:
    """The opt-in accelerations (settings ``COMPILE``, ``ATTENTION_BACKEND``, ``FP8``, ``STEP_CACHE``...)."""

    compile: bool = False
    attention_backend: str | None = None
    fp8: bool = False
    step_cache: bool = False
    step_cache_threshold: float = DEFAULT_STEP_CACHE_THRESHOLD

    def describe(self) -> dict[str, Any]:
        return {
            "compile": self.compile,
            "attention_backend": self.attention_backend or "native",
            "fp8": self.fp8,
            "step_cache": self.step_cache_threshold if self.step_cache else None,
        }


def check_fp8(device: torch.device) -> None:
    """``ConfigurationError`` unless this device can run float8 matmuls and torchao is installed."""
    if device.type != "cuda":
        raise ConfigurationError(
            f"FP8=true needs a CUDA GPU with compute capability >= 8.9 (Ada/Hopper); this engine runs on {device}"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise ConfigurationError(
            f"FP8=true needs compute capability >= 8.9; {torch.cuda.get_device_name(device)} has "
            f"{capability[0]}.{capability[1]}"
        )
    if importlib.util.find_spec("torchao") is None:
        raise ConfigurationError("FP8=true needs torchao: pip install torchao")


def check_accelerations(accelerations: Accelerations, device: torch.device) -> None:
    """Refuse, before the model is loaded, combinations this device cannot run."""
    backend = accelerations.attention_backend
    if backend is not None and backend not in ATTENTION_BACKENDS:
        raise ConfigurationError(
            f"ATTENTION_BACKEND={backend!r} is not one of {', '.join(ATTENTION_BACKENDS)}"
        )
    if backend in CUDA_ONLY_BACKENDS and device.type != "cuda":
        raise ConfigurationError(f"ATTENTION_BACKEND={backend} needs CUDA; this engine runs on {device}")
    if accelerations.fp8:
        check_fp8(device)
    if accelerations.step_cache and not 0 < accelerations.step_cache_threshold < 1:
        raise ConfigurationError("STEP_CACHE_THRESHOLD must be between 0 and 1")


def fp8_filter(module: torch.nn.Module, name: str) -> bool:
    """Which modules FP8 quantizes: the block ``Linear``s (a PEFT-wrapped one by its ``base_layer``)
    but ``FP8_KEEP_BF16``, never a LoRA layer."""
    if not isinstance(module, torch.nn.Linear) or ".lora_" in name:
        return False
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != FP8_BLOCKS or not parts[1].isdigit():
        return False
    inside = ".".join(parts[2:]).removesuffix(".base_layer")
    return inside not in FP8_KEEP_BF16


def fp8_layers(transformer: torch.nn.Module) -> list[str]:
    """Names of the modules ``apply_fp8`` converts."""
    return [name for name, module in transformer.named_modules() if fp8_filter(module, name)]


def is_float8(weight: Any) -> bool:
    """Whether a weight is a torchao float8 tensor (its data in a one-byte float type)."""
    data = getattr(weight, "qdata", None)
    return isinstance(data, torch.Tensor) and data.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def fp8_applied(transformer: torch.nn.Module) -> bool:
    """Whether any linear of the transformer holds float8 weights now."""
    return any(is_float8(getattr(module, "weight", None)) for module in transformer.modules())


def apply_fp8(transformer: torch.nn.Module) -> list[str]:
    """Quantize the transformer in place (see the module docstring); returns the converted layers.

    torchao leaves a weight whose dimensions are not multiples of 16 as it is, with a log line
    only; such layers are missing from the answer and named in a warning here."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    chosen = fp8_layers(transformer)
    quantize_(
        transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fp8_filter
    )
    modules = dict(transformer.named_modules())
    converted = [name for name in chosen if is_float8(modules[name].weight)]
    if len(converted) < len(chosen):
        skipped = sorted(set(chosen) - set(converted))
        log.warning("FP8 left layers in bfloat16", extra={"count": len(skipped), "first": skipped[:3]})
    return converted


def apply_accelerations(pipeline: Any, accelerations: Accelerations, device: torch.device) -> None:
    """Bring the transformer to exactly ``accelerations``, in the order that composes: FP8, attention
    backend, step cache, then compile. Everything but FP8 can be switched off again (benchmarks
    compare variants on one set of weights); FP8 replaces the weights, and only putting the bfloat16
    weights back undoes it (``benchmarks/gpu_speed.py`` keeps a host copy to do so)."""
    check_accelerations(accelerations, device)
    transformer = pipeline.transformer
    if accelerations.fp8 and not fp8_applied(transformer):
        log.info("FP8 applied", extra={"linear_layers": len(apply_fp8(transformer))})
    try:
        if accelerations.attention_backend is not None:
            transformer.set_attention_backend(accelerations.attention_backend)
            setattr(transformer, _BACKEND_MARK, accelerations.attention_backend)
        elif getattr(transformer, _BACKEND_MARK, None) is not None:  # untouched models stay untouched
            transformer.reset_attention_backend()
            setattr(transformer, _BACKEND_MARK, None)
    except (ValueError, RuntimeError, ImportError) as exc:
        raise ConfigurationError(f"ATTENTION_BACKEND={accelerations.attention_backend}: {exc}") from exc
    if getattr(transformer, "_cache_config", None) is not None:
        transformer.disable_cache()
    if accelerations.step_cache:
        from diffusers.hooks import FirstBlockCacheConfig

        transformer.enable_cache(FirstBlockCacheConfig(threshold=accelerations.step_cache_threshold))
    blocks = [
        module for module in transformer.modules() if type(module).__name__ in transformer._repeated_blocks
    ]
    if accelerations.compile:
        # dynamic=True: one graph for every sequence length, so changing sizes does not recompile.
        if not all(getattr(block, "_compiled_call_impl", None) for block in blocks):
            transformer.compile_repeated_blocks(dynamic=True)
    else:
        for block in blocks:
            block._compiled_call_impl = None  # back to eager (what nn.Module.compile set)


_BACKEND_MARK = "_edit_processor_attention_backend"


def reset_step_cache(pipeline: Any, accelerations: Accelerations) -> None:
    """Forget the previous edit's cached residuals (the cache must never cross requests)."""
    if accelerations.step_cache:
        pipeline.transformer._reset_stateful_cache()


def compile_counters() -> Mapping[str, int]:
    """torch.compile's process-wide counts: ``frames`` compiled (each recompile is one more),
    ``graphs`` produced and ``graph_breaks``. After warm-up none should grow."""
    from torch._dynamo.utils import counters

    return {
        "frames": int(counters["frames"].get("total", 0)),
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }
