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
  activations and weights) on every transformer ``Linear`` except the image-stream MLPs
  (``img_mlp``), which others found break under FP8 (vllm-omni #1034/#2795, sglang #23155),
  and LoRA layers. Needs CUDA with compute capability ≥ 8.9 (Ada, Hopper, Blackwell) and
  torchao: anything else is a ``ConfigurationError`` at start-up, never a crash at the first
  request.
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
FP8_KEEP_BF16 = ("img_mlp",)
"""Module-name fragments FP8 leaves in bfloat16."""
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
    """Which modules FP8 quantizes: transformer ``Linear``s but the image MLPs and LoRA layers."""
    if not isinstance(module, torch.nn.Linear):
        return False
    return not any(part in name for part in FP8_KEEP_BF16) and ".lora_" not in name


def apply_fp8(transformer: torch.nn.Module) -> int:
    """Quantize the transformer in place (see the module docstring); returns how many Linears changed."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    chosen = [name for name, module in transformer.named_modules() if fp8_filter(module, name)]
    quantize_(
        transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fp8_filter
    )
    return len(chosen)


def apply_accelerations(pipeline: Any, accelerations: Accelerations, device: torch.device) -> None:
    """Bring the transformer to exactly ``accelerations``, in the order that composes: FP8, attention
    backend, step cache, then compile. Everything but FP8 can be switched off again (benchmarks
    compare variants on one set of weights); FP8 changes the weights for good."""
    check_accelerations(accelerations, device)
    transformer = pipeline.transformer
    if accelerations.fp8 and not getattr(transformer, _FP8_MARK, False):
        log.info("FP8 applied", extra={"linear_layers": apply_fp8(transformer)})
        setattr(transformer, _FP8_MARK, True)
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


_FP8_MARK = "_edit_processor_fp8"
_BACKEND_MARK = "_edit_processor_attention_backend"


def reset_step_cache(pipeline: Any, accelerations: Accelerations) -> None:
    """Forget the previous edit's cached residuals (the cache must never cross requests)."""
    if accelerations.step_cache:
        pipeline.transformer._reset_stateful_cache()


def compile_counters() -> Mapping[str, int]:
    """torch.compile's process-wide counts: ``frames`` compiled (each recompile is one more) and
    ``graphs`` produced. After warm-up neither should grow."""
    from torch._dynamo.utils import counters

    return {
        "frames": int(counters["frames"].get("total", 0)),
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
    }
