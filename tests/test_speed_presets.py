"""Speed presets through the real diffusers pipeline (tiny model, tiny Lightning-layout LoRAs, CPU).

``fast`` / ``fastest`` load a LoRA written with the published Lightning key names, swap in the
Lightning scheduler, run 8 / 4 steps with one forward each (CFG off); ``quality`` runs the
model's own scheduler with CFG, and switching between them never leaks.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.loras import LoraSource
from processor.adapters.diffusers.presets import LIGHTNING_ADAPTERS, LIGHTNING_SCHEDULER_CONFIG
from processor.adapters.diffusers.tiny_model import (
    QWEN_IMAGE_SCHEDULER_CONFIG,
    save_tiny_lora,
    tiny_lora_state_dict,
)
from processor.domain.errors import ConfigurationError, InvalidInput
from processor.domain.request import EditParams
from tests.conftest import fresh_process_digest

REPO = Path(__file__).resolve().parents[1]


def picture() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 40, 90))


def digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def lightning_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lightning")
    return {
        "fast": save_tiny_lora(folder / "Tiny-Lightning-8steps-V1.0-bf16.safetensors", seed=8),
        "fastest": save_tiny_lora(folder / "Tiny-Lightning-4steps-V1.0-bf16.safetensors", seed=4),
    }


@pytest.fixture(scope="module")
def lightning_editor(tiny_model_dir: Path, lightning_files: dict[str, Path]) -> DiffusersEditor:
    return DiffusersEditor.load(
        tiny_model_dir,
        device="cpu",
        lightning={preset: LoraSource.parse(str(path)) for preset, path in lightning_files.items()},  # type: ignore[misc]
    )


class Observed:
    """What the pipeline really ran with, seen from inside it (progress callback, forward hook)."""

    def __init__(self, editor: DiffusersEditor) -> None:
        self.editor = editor
        self.forwards = 0
        self.steps: list[int] = []
        self.adapters: set[tuple[str, ...]] = set()
        self.scheduler: dict[str, Any] = {}
        self.timesteps = 0

    def progress(self, step: int, total: int) -> None:
        pipeline = self.editor.pipeline
        self.steps.append(total)
        self.scheduler = dict(pipeline.scheduler.config)
        self.timesteps = len(pipeline.scheduler.timesteps)
        transformer = pipeline.transformer
        enabled = any(
            not getattr(module, "disable_adapters", True)
            for module in transformer.modules()
            if hasattr(module, "lora_A")
        )
        self.adapters.add(tuple(sorted(transformer.active_adapters())) if enabled else ())

    @classmethod
    def run(cls, editor: DiffusersEditor, params: EditParams) -> tuple[Observed, Any]:
        observed = cls(editor)

        def count(*_: Any) -> None:
            observed.forwards += 1

        handle = editor.pipeline.transformer.register_forward_hook(count)
        try:
            result = editor.edit([picture()], params, on_progress=observed.progress)
        finally:
            handle.remove()
        return observed, result


@pytest.mark.parametrize(("speed", "steps"), [("fast", 8), ("fastest", 4)])
def test_lightning_presets_run_their_lora_scheduler_steps_and_no_cfg(
    lightning_editor: DiffusersEditor, speed: str, steps: int
) -> None:
    observed, result = Observed.run(
        lightning_editor,
        EditParams(prompt="make it blue", seed=1, speed=speed),  # type: ignore[arg-type]
    )
    assert observed.steps == [steps] * steps and observed.timesteps == steps
    assert observed.forwards == steps  # one forward per step: CFG off
    assert observed.adapters == {(LIGHTNING_ADAPTERS[speed],)}  # type: ignore[index]
    for key, value in LIGHTNING_SCHEDULER_CONFIG.items():
        assert observed.scheduler[key] == value, key
    assert observed.scheduler["base_shift"] == observed.scheduler["max_shift"] == math.log(3)
    assert observed.scheduler["shift_terminal"] is None
    assert observed.scheduler["time_shift_type"] == "exponential"
    metadata = result.metadata()
    assert metadata["speed"] == speed and metadata["num_inference_steps"] == steps
    assert metadata["true_cfg_scale"] == 1.0 and metadata["scheduler"] == "lightning"
    assert metadata["model"]["speeds"] == ["quality", "fast", "fastest"]


def test_quality_runs_the_model_scheduler_with_cfg_and_no_adapter(lightning_editor: DiffusersEditor) -> None:
    observed, result = Observed.run(
        lightning_editor, EditParams(prompt="make it blue", seed=1, num_inference_steps=3, speed="quality")
    )
    assert observed.forwards == 6  # true CFG: two forwards per step
    assert observed.adapters == {()}
    for key, value in QWEN_IMAGE_SCHEDULER_CONFIG.items():
        assert observed.scheduler[key] == value, key
    metadata = result.metadata()
    assert (metadata["speed"], metadata["true_cfg_scale"], metadata["scheduler"]) == ("quality", 4.0, "model")


def test_the_default_preset_is_the_deployments(
    tiny_model_dir: Path, lightning_files: dict[str, Path]
) -> None:
    editor = DiffusersEditor.load(
        tiny_model_dir,
        device="cpu",
        speed="fastest",
        lightning={"fastest": LoraSource.parse(str(lightning_files["fastest"]))},
    )
    assert editor.describe()["speed_default"] == "fastest"
    result = editor.edit([picture()], EditParams(prompt="blue", seed=2))
    assert result.metadata()["speed"] == "fastest" and result.num_inference_steps == 4
    assert (
        editor.edit(
            [picture()], EditParams(prompt="blue", seed=2, speed="quality", num_inference_steps=2)
        ).num_inference_steps
        == 2
    )


def test_a_preset_without_its_lightning_lora_is_refused(
    tiny_editor: DiffusersEditor, tiny_model_dir: Path
) -> None:
    with pytest.raises(InvalidInput, match="LIGHTNING_8STEP_LORA") as refused:
        tiny_editor.edit([picture()], EditParams(prompt="blue", speed="fast"))
    assert refused.value.reason == "speed_unavailable"
    with pytest.raises(InvalidInput, match="speed must be one of"):
        tiny_editor.edit([picture()], EditParams(prompt="blue", speed="ludicrous"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="SPEED=fast needs"):
        DiffusersEditor.load(tiny_model_dir, device="cpu", speed="fast")


def test_a_lightning_file_that_does_not_exist_fails_at_start_up(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot load the LoRA"):
        DiffusersEditor.load(
            tiny_model_dir, device="cpu", lightning={"fast": LoraSource.parse(str(tmp_path / "missing"))}
        )


def test_the_tiny_lora_has_the_published_lightning_key_layout() -> None:
    keys = set(tiny_lora_state_dict(seed=0))
    assert "transformer_blocks.0.attn.to_q.lora_down.weight" in keys
    assert "transformer_blocks.0.attn.to_q.lora_up.weight" in keys
    assert "transformer_blocks.0.attn.to_q.alpha" in keys
    from diffusers import QwenImageEditPlusPipeline

    converted = QwenImageEditPlusPipeline.lora_state_dict(tiny_lora_state_dict(seed=0))
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in converted
    assert not any(key.endswith(".alpha") for key in converted)


def test_hub_sources_parse_into_repo_subfolder_and_file(tmp_path: Path) -> None:
    source = LoraSource.parse(
        "lightx2v/Qwen-Image-Lightning/Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors"
    )
    assert source.location == "lightx2v/Qwen-Image-Lightning"
    assert source.subfolder == "Qwen-Image-Edit-2509"
    assert source.weight_name == "Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors"
    local = save_tiny_lora(tmp_path / "a.safetensors", seed=1)
    assert LoraSource.parse(str(local)) == LoraSource(str(tmp_path), weight_name="a.safetensors")
    with pytest.raises(ConfigurationError, match="neither a local file"):
        LoraSource.parse("just-a-name")


@pytest.fixture(scope="module")
def fresh_process_digest_of_quality(tiny_model_dir: Path) -> str:
    """The ``quality`` output of a process that never ran anything else."""
    return fresh_process_digest(tiny_model_dir, seed=5, steps=3)


def test_quality_after_fast_and_fastest_is_byte_identical_to_a_fresh_process(
    lightning_editor: DiffusersEditor, fresh_process_digest_of_quality: str
) -> None:
    params = EditParams(prompt="make it blue", seed=5, num_inference_steps=3)
    lightning_editor.edit([picture()], EditParams(prompt="make it blue", seed=5, speed="fast"))
    lightning_editor.edit([picture()], EditParams(prompt="make it blue", seed=5, speed="fastest"))
    assert digest(lightning_editor.edit([picture()], params).image) == fresh_process_digest_of_quality
    fast = lightning_editor.edit([picture()], EditParams(prompt="make it blue", seed=5, speed="fast"))
    assert digest(fast.image) != fresh_process_digest_of_quality
    assert digest(lightning_editor.edit([picture()], params).image) == fresh_process_digest_of_quality


def test_the_comfyui_engine_refuses_presets_and_loras_instead_of_ignoring_them() -> None:
    from processor.adapters.comfyui.editor import ComfyUIEditor
    from processor.devtools.serving import serve_in_thread
    from processor.domain.speed import LoraChoice
    from tests.comfyui_server import ComfyState, create_comfyui_app

    served = serve_in_thread(create_comfyui_app(ComfyState()))
    try:
        editor = ComfyUIEditor(served.url, timeout=5)
        for params in (
            EditParams(prompt="blue", speed="fast"),
            EditParams(prompt="blue", loras=(LoraChoice("ink"),)),
        ):
            with pytest.raises(InvalidInput, match="EDIT_ENGINE=diffusers") as refused:
                editor.edit([picture()], params)
            assert refused.value.reason == "speed_unavailable"
        assert editor.edit(
            [picture()], EditParams(prompt="blue", speed="quality", num_inference_steps=2)
        ).seed
    finally:
        served.stop()
