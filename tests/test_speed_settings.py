"""SPEED, LIGHTNING_*, LORAS and the acceleration settings, read from the environment and built
by the composition root into a working editor (tiny model, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processor.adapters.diffusers.presets import KNOWN_LIGHTNING
from processor.adapters.diffusers.tiny_model import save_tiny_lora
from processor.composition import build_editor, speed_options
from processor.domain.errors import ConfigurationError
from processor.settings import load_settings


def test_the_defaults_are_todays_path() -> None:
    settings = load_settings()
    assert (settings.speed, settings.lightning_8step_lora, settings.loras) == ("quality", None, {})
    assert not (settings.compile or settings.fp8 or settings.step_cache)
    options = speed_options(settings)
    assert options["lightning"] == {} and options["loras"] == {}


def test_environment_values_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEED", "fast")
    monkeypatch.setenv("LIGHTNING_8STEP_LORA", "auto")
    monkeypatch.setenv("LIGHTNING_4STEP_LORA", "me/my-loras/4step.safetensors")
    monkeypatch.setenv(
        "LORAS",
        json.dumps(
            {"ink": "me/loras/ink.safetensors", "wc": {"source": "me/loras/wc.safetensors", "scale": 0.7}}
        ),
    )
    monkeypatch.setenv("LORA_CACHE_SIZE", "2")
    monkeypatch.setenv("COMPILE", "true")
    monkeypatch.setenv("ATTENTION_BACKEND", "_native_cudnn")
    monkeypatch.setenv("STEP_CACHE", "true")
    monkeypatch.setenv("STEP_CACHE_THRESHOLD", "0.1")
    settings = load_settings()
    options = speed_options(settings)
    assert options["speed"] == "fast"
    assert options["lightning"]["fast"].describe() == KNOWN_LIGHTNING["Qwen/Qwen-Image-Edit-2509"]["fast"]
    assert options["lightning"]["fastest"].weight_name == "4step.safetensors"
    assert {name: lora.scale for name, lora in options["loras"].items()} == {"ink": 1.0, "wc": 0.7}
    assert options["lora_cache_size"] == 2
    assert options["accelerations"].describe() == {
        "compile": True,
        "attention_backend": "_native_cudnn",
        "fp8": False,
        "step_cache": 0.1,
    }


def test_bad_values_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SPEED"):
        load_settings(speed="ludicrous")
    with pytest.raises(ConfigurationError, match="LoRA names"):
        load_settings(loras={"Bad Name": "x/y/z.safetensors"})
    with pytest.raises(ConfigurationError, match="no published Lightning LoRA"):
        speed_options(load_settings(model_id=str(tmp_path), lightning_8step_lora="auto"))


def test_the_composition_root_builds_an_editor_with_presets_and_loras(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = load_settings(
        model_id=str(tiny_model_dir),
        device="cpu",
        warmup=False,
        speed="fast",
        lightning_8step_lora=str(save_tiny_lora(tmp_path / "8.safetensors", seed=8)),
        lightning_4step_lora=str(save_tiny_lora(tmp_path / "4.safetensors", seed=4)),
        loras={"ink": {"source": str(save_tiny_lora(tmp_path / "ink.safetensors", seed=1)), "scale": 0.5}},
        attention_backend="native",
    )
    editor = build_editor(settings)
    try:
        described = editor.describe()
        assert described["speed_default"] == "fast"
        assert described["speeds"] == ["quality", "fast", "fastest"]
        assert described["loras_allowed"] == ["ink"]
        assert described["attention_backend"] == "native"
    finally:
        editor.close()


def test_fp8_on_a_machine_without_fp8_is_refused_at_start_up(tiny_model_dir: Path) -> None:
    settings = load_settings(model_id=str(tiny_model_dir), device="cpu", warmup=False, fp8=True)
    with pytest.raises(ConfigurationError, match="FP8=true needs a CUDA GPU"):
        build_editor(settings)


def test_an_unknown_attention_backend_is_refused(tiny_model_dir: Path) -> None:
    settings = load_settings(
        model_id=str(tiny_model_dir), device="cpu", warmup=False, attention_backend="warp"
    )
    with pytest.raises(ConfigurationError, match="ATTENTION_BACKEND='warp'"):
        build_editor(settings)
