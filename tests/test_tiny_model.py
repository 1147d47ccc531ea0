"""The tiny model: built offline, saved and loaded like the real checkpoint, with the same classes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.tiny_model import (
    QWEN_IMAGE_SCHEDULER_CONFIG,
    QWEN_SPECIAL_TOKENS,
    TINY_SIZING,
    save_tiny_model,
)
from processor.domain.errors import ConfigurationError
from processor.domain.sizing import ModelSizing

REPO = Path(__file__).resolve().parents[1]

# Qwen/Qwen-Image-Edit-2509's model_index.json, component by component.
REAL_COMPONENTS = {
    "_class_name": "QwenImageEditPlusPipeline",
    "processor": ["transformers", "Qwen2VLProcessor"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "QwenImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLQwenImage"],
}


def file_digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_the_tiny_model_has_the_real_pipelines_components(tiny_model_dir: Path) -> None:
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert {key: index[key] for key in REAL_COMPONENTS} == REAL_COMPONENTS


def test_it_loads_through_from_pretrained_as_those_classes(tiny_model_dir: Path) -> None:
    import diffusers
    import transformers

    pipeline = diffusers.QwenImageEditPlusPipeline.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    for name, (library, class_name) in ((k, v) for k, v in REAL_COMPONENTS.items() if k != "_class_name"):
        expected = getattr(diffusers if library == "diffusers" else transformers, class_name)
        assert isinstance(pipeline.components[name], expected), name
    assert dict(pipeline.scheduler.config) | QWEN_IMAGE_SCHEDULER_CONFIG == dict(pipeline.scheduler.config)


def test_it_is_small_and_writes_its_sizing(tiny_model_dir: Path) -> None:
    total = sum(path.stat().st_size for path in tiny_model_dir.rglob("*") if path.is_file())
    assert total < 5 * 1024 * 1024
    assert ModelSizing.for_model(tiny_model_dir) == TINY_SIZING
    assert ModelSizing.for_model(tiny_model_dir / "no-such-folder") == ModelSizing()


def test_building_is_fast_and_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    again = save_tiny_model(tmp_path / "again")
    assert time.perf_counter() - started < 10
    assert file_digests(again) == file_digests(tiny_model_dir)


def test_the_tokenizer_keeps_qwen_special_tokens_whole(tiny_editor: DiffusersEditor) -> None:
    pipeline = tiny_editor.pipeline
    tokenizer = pipeline.processor.tokenizer
    pieces = tokenizer.tokenize("Picture 1: <|vision_start|><|image_pad|><|vision_end|>blue")
    assert pieces[-7:-4] == ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
    config = pipeline.text_encoder.config
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == config.image_token_id
    assert tokenizer.convert_tokens_to_ids("<|vision_start|>") == config.vision_start_token_id
    assert len(tokenizer) == 256 + len(QWEN_SPECIAL_TOKENS) <= config.text_config.vocab_size


def test_loading_another_pipeline_class_is_a_configuration_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "qwen-image-edit"
    shutil.copytree(tiny_model_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "QwenImageEditPipeline"}))
    with pytest.raises(ConfigurationError, match="QwenImageEditPipeline"):
        DiffusersEditor.load(other, device="cpu")


def test_a_missing_model_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot load"):
        DiffusersEditor.load(tmp_path / "missing", device="cpu")


NO_TORCHVISION = textwrap.dedent(
    """
    import sys
    sys.modules["torchvision"] = None  # `import torchvision` fails and find_spec reports it absent
    from transformers.utils import is_torchvision_available
    assert not is_torchvision_available()
    from PIL import Image
    from processor.adapters.diffusers.engine import DiffusersEditor
    from processor.domain.request import EditParams
    from processor.adapters.diffusers.tiny_model import save_tiny_model
    built = save_tiny_model(sys.argv[1])
    for folder in (built, sys.argv[2]):  # its own folder, and one built with torchvision
        editor = DiffusersEditor.load(folder, device="cpu")
        assert editor.pipeline.processor.get_attributes() == ["image_processor", "tokenizer"]
        result = editor.edit([Image.new("RGB", (64, 48), "red")], EditParams(prompt="blue", num_inference_steps=2))
        print(folder, result.width, result.height)
    """
)


def test_without_torchvision_the_model_builds_loads_and_edits(tiny_model_dir: Path, tmp_path: Path) -> None:
    from processor.adapters.diffusers.compat import torchvision_available

    assert torchvision_available()  # this process has it: the subprocess below hides it
    built = tmp_path / "built-without-torchvision"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", NO_TORCHVISION, str(built), str(tiny_model_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count(" 64 64") == 2
    # And what was built without torchvision loads where torchvision is installed.
    editor = DiffusersEditor.load(built, device="cpu")
    assert type(editor.pipeline.processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
