"""Lossless accelerations on CPU: regional compile (within a stated tolerance of eager, no
recompiles when sizes or presets change after warm-up) and the attention backend setting.

Compiling the tiny model's blocks with inductor takes one to two minutes on a 2-core CPU
the first time; the module compiles once and every test reuses it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processor.adapters.diffusers.accelerate import Accelerations, compile_counters
from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.loras import LoraSource
from processor.adapters.diffusers.tiny_model import save_tiny_lora
from processor.domain.errors import ConfigurationError
from processor.domain.request import EditParams

log = logging.getLogger(__name__)

COMPILE_TOLERANCE = 2
"""Largest per-channel difference (of 255) allowed between compiled and eager output pixels:
inductor fuses and reorders float32 arithmetic, so the images may differ by rounding."""

SIZES = ((64, 64), (96, 64), (64, 96), (128, 96))


def picture() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 40, 90))


def pixels(editor: DiffusersEditor, params: EditParams) -> np.ndarray:
    return np.asarray(editor.edit([picture()], params).image, dtype=np.int16)


@pytest.fixture(scope="module")
def lightning(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoraSource]:
    folder = tmp_path_factory.mktemp("lightning")
    return {
        "fast": LoraSource.parse(str(save_tiny_lora(folder / "8.safetensors", seed=8))),
        "fastest": LoraSource.parse(str(save_tiny_lora(folder / "4.safetensors", seed=4))),
    }


@pytest.fixture(scope="module")
def eager(tiny_model_dir: Path, lightning: dict[str, LoraSource]) -> DiffusersEditor:
    return DiffusersEditor.load(tiny_model_dir, device="cpu", lightning=lightning)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def compiled(tiny_model_dir: Path, lightning: dict[str, LoraSource]) -> DiffusersEditor:
    editor = DiffusersEditor.load(
        tiny_model_dir,
        device="cpu",
        lightning=lightning,  # type: ignore[arg-type]
        accelerations=Accelerations(compile=True),
        warmup=True,  # compiles here, once, for every preset
    )
    assert editor.describe()["compile"] is True
    log.info(f"compile counters after warm-up (quality, fast, fastest): {dict(compile_counters())}")
    return editor


@pytest.mark.parametrize("speed", ["quality", "fast", "fastest"])
def test_compiled_output_is_the_eager_output_within_tolerance(
    eager: DiffusersEditor, compiled: DiffusersEditor, speed: str
) -> None:
    params = EditParams(prompt="make it blue", seed=3, num_inference_steps=2, speed=speed)  # type: ignore[arg-type]
    difference = np.abs(pixels(eager, params) - pixels(compiled, params))
    log.info(f"compile vs eager ({speed}): max {difference.max()}, mean {difference.mean():.4f}")
    assert difference.max() <= COMPILE_TOLERANCE


def test_no_recompile_when_sizes_and_presets_change_after_warm_up(compiled: DiffusersEditor) -> None:
    before = compile_counters()
    for width, height in SIZES:
        for speed in ("quality", "fast", "fastest"):
            compiled.edit(
                [picture()],
                EditParams(
                    prompt="blue", seed=1, num_inference_steps=2, width=width, height=height, speed=speed
                ),  # type: ignore[arg-type]
            )
    after = compile_counters()
    log.info(f"compile counters before {dict(before)}, after {len(SIZES)} sizes x 3 presets {dict(after)}")
    assert after == before  # no frame recompiled, no new graph


def test_attention_backends(tiny_model_dir: Path, eager: DiffusersEditor) -> None:
    params = EditParams(prompt="make it blue", seed=3, num_inference_steps=2)
    math_backend = DiffusersEditor.load(
        tiny_model_dir, device="cpu", accelerations=Accelerations(attention_backend="_native_math")
    )
    assert math_backend.describe()["attention_backend"] == "_native_math"
    assert np.abs(pixels(math_backend, params) - pixels(eager, params)).max() <= COMPILE_TOLERANCE
    math_backend.pipeline.transformer.reset_attention_backend()
    with pytest.raises(ConfigurationError, match="ATTENTION_BACKEND=flash"):
        DiffusersEditor.load(
            tiny_model_dir, device="cpu", accelerations=Accelerations(attention_backend="flash")
        )
