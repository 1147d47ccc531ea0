"""Loading the pipeline: the device, ``from_pretrained`` of a hub id or a folder with the engine's
fixes, memory placement and quantization, and the model id as users may see it."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import QwenImageEditPlusPipeline

from processor.adapters.diffusers.compat import allow_processor_without_torchvision, install_mrope_fix
from processor.adapters.diffusers.run import InstrumentedPipeline
from processor.domain.errors import ConfigurationError, install_extra
from processor.domain.rules import DeviceChoice, MemoryMode, Quantization

log = logging.getLogger(__name__)


PIPELINE_CLASS = "QwenImageEditPlusPipeline"
SUPPORTED_PIPELINE_CLASSES = (PIPELINE_CLASS,)
"""Pipeline classes (``model_index.json`` ``_class_name``) the engine runs: Qwen-Image-Edit-2509 and -2511."""
SUPPORTED_MODELS = {
    "Qwen/Qwen-Image-Edit-2509": "zero_cond_t false",
    "Qwen/Qwen-Image-Edit-2511": "zero_cond_t true (diffusers >= 0.37)",
}
"""Hub ids known to run through ``QwenImageEditPlusPipeline`` (docs/speed.md says how each was verified)."""


def resolve_device(choice: DeviceChoice | str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU. Asking for CUDA without one is a configuration error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("DEVICE=cuda but no CUDA device is available")
    return device


def engine_devices(choice: DeviceChoice | str, cuda_devices: int | None = None) -> list[torch.device]:
    """The devices the worker and ``serve`` load one engine on each: every visible GPU for ``auto`` and
    ``cuda`` (``CUDA_VISIBLE_DEVICES`` decides which are visible), the CPU for ``cpu`` or ``auto``
    without one. ``cuda_devices``: the visible count (tests stand one in)."""
    count = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if choice == "cpu" or (choice == "auto" and count == 0):
        return [torch.device("cpu")]
    if count == 0:
        raise ConfigurationError(f"DEVICE={choice} but no CUDA device is available")
    return [torch.device("cuda", index) for index in range(count)]


def public_model_id(model_id: str) -> str:
    """The model id as results and PNG text record it: a hub id as is, a local folder by its name
    only (``local:<name>``): its path says how the host is laid out, and users read results."""
    path = Path(model_id).expanduser()
    if model_id.startswith(("/", ".", "~")) or path.is_dir():
        return f"local:{path.resolve().name}"
    return model_id


def load_pipeline(
    model_id: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device,
    memory: MemoryMode = "full",
    quantization: Quantization = "nf4",
) -> Any:
    """``from_pretrained`` a ``QwenImageEditPlusPipeline`` with the engine's fixes, placed on ``device``
    as ``memory`` says."""
    allow_processor_without_torchvision()
    # Loading progress bars are noise in a service's logs (and on the CLI's stderr).
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # fp16 overflows in this model
    source = str(model_id)
    options: dict[str, Any] = {"revision": revision, "cache_dir": str(cache_dir) if cache_dir else None}
    try:
        class_name = QwenImageEditPlusPipeline.load_config(source, **options).get("_class_name")
        if class_name not in SUPPORTED_PIPELINE_CLASSES:
            raise ConfigurationError(
                f"{source} is a {class_name}; this engine runs only {', '.join(SUPPORTED_PIPELINE_CLASSES)} "
                f"models ({', '.join(SUPPORTED_MODELS)})"
            )
        if source not in SUPPORTED_MODELS and not Path(source).is_dir():
            log.warning(
                "%s is a %s but not one of the verified model ids (%s)",
                source,
                class_name,
                ", ".join(SUPPORTED_MODELS),
            )
        if memory == "quantized":
            options["quantization_config"] = _quantization_config(quantization, device, dtype)
        pipeline = InstrumentedPipeline.from_pretrained(source, dtype=dtype, **options)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load the model {source!r}: {exc}") from exc
    if not install_mrope_fix(pipeline.text_encoder):
        log.info("text encoder computes 3D positions itself; no mm_token_type_ids hook needed")
    pipeline.set_progress_bar_config(disable=True)
    if memory != "full" and device.type == "cuda":
        # Quantized too: the 16 GB text encoder waits on the CPU while the transformer runs.
        pipeline.enable_model_cpu_offload(device=device)
    else:
        if memory == "offload":
            log.warning("MEMORY_MODE=offload applies to CUDA only; ignored on %s", device)
        pipeline.to(device)
    return pipeline


def _quantization_config(quantization: Quantization, device: torch.device, dtype: torch.dtype) -> Any:
    """diffusers' own pipeline quantization for the transformer, the one model too big for 24 GB."""
    from diffusers.quantizers import PipelineQuantizationConfig

    if quantization == "nf4":
        if device.type != "cuda":
            raise ConfigurationError("QUANTIZATION=nf4 (bitsandbytes) needs CUDA; use int8 on this device")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigurationError(_MISSING_QUANTIZATION.format(library="bitsandbytes"))
        return PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit",
            quant_kwargs={
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_compute_dtype": dtype,
            },
            components_to_quantize=["transformer"],
        )
    if importlib.util.find_spec("torchao") is None:
        raise ConfigurationError(_MISSING_QUANTIZATION.format(library="torchao"))
    from torchao.quantization import Int8WeightOnlyConfig

    # An explicit mapping: the string shorthand ("int8wo") trips diffusers' check that its and
    # transformers' config signatures match.
    return PipelineQuantizationConfig(
        quant_mapping={"transformer": diffusers.TorchAoConfig(Int8WeightOnlyConfig())}
    )


_MISSING_QUANTIZATION = "MEMORY_MODE=quantized needs {library}: " + install_extra("quantization")
