"""Memory modes: ``full``, ``offload`` and ``quantized`` each load and edit (tiny model, CPU).

On a GPU the modes decide placement (model CPU offload) and the transformer's weight
format; on CPU only quantization changes anything, and ``offload`` falls back to ``full``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.domain.errors import ConfigurationError
from processor.domain.request import EditParams
from processor.settings import load_settings

PARAMS = EditParams(prompt="make it blue", num_inference_steps=2, seed=3)


def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def linear_weight_types(editor: DiffusersEditor) -> set[str]:
    return {
        type(module.weight).__name__
        for module in editor.pipeline.transformer.modules()
        if isinstance(module, torch.nn.Linear)
    }


@pytest.fixture(scope="module")
def full_result(tiny_model_dir: Path) -> np.ndarray:
    editor = DiffusersEditor.load(tiny_model_dir, device="cpu", memory="full")
    assert editor.describe()["memory_mode"] == "full"
    return np.asarray(editor.edit([photo()], PARAMS).image, dtype=np.float64)


def test_offload_falls_back_to_full_on_cpu_with_the_same_result(
    tiny_model_dir: Path, full_result: np.ndarray
) -> None:
    editor = DiffusersEditor.load(tiny_model_dir, device="cpu", memory="offload")
    assert editor.describe()["memory_mode"] == "full"  # what it really runs as
    assert (np.asarray(editor.edit([photo()], PARAMS).image) == full_result).all()


def test_int8_quantization_loads_edits_and_stays_close_to_full(
    tiny_model_dir: Path, full_result: np.ndarray
) -> None:
    editor = DiffusersEditor.load(tiny_model_dir, device="cpu", memory="quantized", quantization="int8")
    assert editor.describe()["memory_mode"] == "quantized"
    assert editor.describe()["quantization"] == "int8"
    assert linear_weight_types(editor) == {"Int8Tensor"}
    result = np.asarray(editor.edit([photo()], PARAMS).image, dtype=np.float64)
    difference = np.abs(result - full_result).mean()
    assert 0 < difference < 8, difference  # quantized, so not identical, but the same picture


def test_nf4_needs_cuda(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs CUDA"):
        DiffusersEditor.load(tiny_model_dir, device="cpu", memory="quantized", quantization="nf4")


def test_settings_choose_the_mode_and_keep_the_old_cpu_offload_switch() -> None:
    assert load_settings().memory_mode == "full"
    assert load_settings(cpu_offload=True).memory_mode == "offload"
    assert load_settings(memory_mode="quantized", quantization="int8").quantization == "int8"
    with pytest.raises(ConfigurationError, match="MEMORY_MODE"):
        load_settings(memory_mode="tiny")
