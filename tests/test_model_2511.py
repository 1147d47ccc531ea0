"""Qwen-Image-Edit-2511: a drop-in through ``QwenImageEditPlusPipeline`` (tiny 2511-shaped model, CPU).

2511's transformer config differs from 2509's in ``zero_cond_t: true`` (diffusers >= 0.37):
the conditioning image tokens are modulated with a zero timestep. The tiny model below has
the same weights as the tiny 2509 model and only that flag set, so a different output
proves the flag reaches the transformer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from processor.adapters.diffusers.engine import SUPPORTED_MODELS, DiffusersEditor
from processor.adapters.diffusers.loras import LoraSource
from processor.adapters.diffusers.tiny_model import save_tiny_lora, save_tiny_model
from processor.domain.errors import ConfigurationError
from processor.domain.request import EditParams

PARAMS = EditParams(prompt="make it blue", seed=11, num_inference_steps=2)


def picture() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 40, 90))


@pytest.fixture(scope="module")
def tiny_2511_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-2511"), zero_cond_t=True)


def test_both_model_ids_are_supported() -> None:
    assert set(SUPPORTED_MODELS) == {"Qwen/Qwen-Image-Edit-2509", "Qwen/Qwen-Image-Edit-2511"}


def test_a_2511_shaped_model_loads_and_edits_with_zero_cond_t(
    tiny_2511_dir: Path, tiny_editor: DiffusersEditor, tmp_path: Path
) -> None:
    config = json.loads((tiny_2511_dir / "transformer" / "config.json").read_text())
    assert config["zero_cond_t"] is True
    editor = DiffusersEditor.load(
        tiny_2511_dir,
        device="cpu",
        lightning={"fastest": LoraSource.parse(str(save_tiny_lora(tmp_path / "4.safetensors", seed=4)))},
    )
    assert editor.pipeline.transformer.zero_cond_t is True
    assert editor.describe()["zero_cond_t"] is True and tiny_editor.describe()["zero_cond_t"] is False
    result = editor.edit([picture()], PARAMS)
    same_weights_2509 = tiny_editor.edit([picture()], PARAMS)
    assert (result.width, result.height) == (same_weights_2509.width, same_weights_2509.height)
    assert (
        hashlib.sha256(result.image.tobytes()).digest()
        != hashlib.sha256(same_weights_2509.image.tobytes()).digest()
    )
    fastest = editor.edit([picture()], EditParams(prompt="make it blue", seed=11, speed="fastest"))
    assert fastest.num_inference_steps == 4


@pytest.mark.parametrize("class_name", ["QwenImage21Pipeline", "QwenImageEditPipeline", "FluxPipeline"])
def test_an_unsupported_pipeline_class_is_refused_at_start_up(
    tiny_model_dir: Path, tmp_path: Path, class_name: str
) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))
    with pytest.raises(
        ConfigurationError, match=f"is a {class_name}; this engine runs only QwenImageEditPlusPipeline"
    ):
        DiffusersEditor.load(other, device="cpu")
