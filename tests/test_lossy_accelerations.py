"""Lossy accelerations: FP8 refuses where it cannot run (at start-up, not at the first request);
the step cache skips blocks, stays close to the eager output, and never crosses requests."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from processor.adapters.diffusers.accelerate import Accelerations, check_fp8, fp8_filter
from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.loras import LoraSource
from processor.adapters.diffusers.tiny_model import save_tiny_lora
from processor.domain.errors import ConfigurationError
from processor.domain.request import EditParams

log = logging.getLogger(__name__)
PARAMS = EditParams(prompt="make it blue", seed=3, num_inference_steps=12)


def picture() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 40, 90))


def test_fp8_on_cpu_is_a_configuration_error_before_the_model_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"compute capability >= 8\.9"):
        check_fp8(torch.device("cpu"))
    # Refused before loading: the folder does not even exist.
    with pytest.raises(ConfigurationError, match="FP8=true needs a CUDA GPU"):
        DiffusersEditor.load(tmp_path / "absent", device="cpu", accelerations=Accelerations(fp8=True))


def test_fp8_keeps_the_image_mlps_and_lora_layers_in_bfloat16(tiny_model_dir: Path, tmp_path: Path) -> None:
    editor = DiffusersEditor.load(
        tiny_model_dir,
        device="cpu",
        lightning={"fast": LoraSource.parse(str(save_tiny_lora(tmp_path / "8.safetensors", seed=8)))},
    )
    chosen = [
        name for name, module in editor.pipeline.transformer.named_modules() if fp8_filter(module, name)
    ]
    assert chosen, "FP8 would quantize nothing"
    assert not [name for name in chosen if "img_mlp" in name or ".lora_" in name]
    assert "transformer_blocks.0.txt_mlp.net.2.base_layer" in chosen
    assert "transformer_blocks.0.attn.to_q.base_layer" in chosen


def run_counting_blocks(editor: DiffusersEditor, params: EditParams) -> tuple[np.ndarray, int]:
    """The image, and how many times the transformer's last block really computed (a skipped
    block is still called, but returns the cached residual without running its layers)."""
    calls = 0

    def count(*_: Any) -> None:
        nonlocal calls
        calls += 1

    handle = editor.pipeline.transformer.transformer_blocks[-1].attn.to_q.register_forward_hook(count)
    try:
        image = editor.edit([picture()], params).image
    finally:
        handle.remove()
    return np.asarray(image, dtype=np.float64), calls


def test_the_step_cache_skips_blocks_stays_close_and_resets_between_requests(
    tiny_model_dir: Path, tiny_editor: DiffusersEditor
) -> None:
    eager, eager_calls = run_counting_blocks(tiny_editor, PARAMS)
    cached_editor = DiffusersEditor.load(
        tiny_model_dir, device="cpu", accelerations=Accelerations(step_cache=True, step_cache_threshold=0.4)
    )
    assert cached_editor.describe()["step_cache"] == 0.4
    cached, cached_calls = run_counting_blocks(cached_editor, PARAMS)
    error = np.abs(cached - eager)
    log.info(
        "step cache 0.4: last block ran %d of %d times; pixel error max %.0f mean %.3f",
        cached_calls,
        eager_calls,
        error.max(),
        error.mean(),
    )
    assert cached_calls < eager_calls  # it skipped work (18 of 24 on the tiny model)
    assert error.mean() < 16  # lossy, but the same picture (of 255)
    # The cache starts empty for every edit: the same request again gives the same bytes.
    again, again_calls = run_counting_blocks(cached_editor, PARAMS)
    assert again_calls == cached_calls and (again == cached).all()
    other = EditParams(prompt="make it green", seed=9, num_inference_steps=12)
    cached_editor.edit([picture()], other)
    assert (run_counting_blocks(cached_editor, PARAMS)[0] == cached).all()


def test_a_step_cache_threshold_outside_zero_to_one_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="STEP_CACHE_THRESHOLD"):
        DiffusersEditor.load(
            tiny_model_dir,
            device="cpu",
            accelerations=Accelerations(step_cache=True, step_cache_threshold=1.5),
        )
