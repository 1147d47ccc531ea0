"""Per-request LoRAs from the operator's allowlist (tiny model, tiny LoRAs, CPU, real PEFT adapters)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from PIL import Image

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.loras import (
    AdapterCache,
    AllowedLora,
    LoraSource,
    adapter_name,
    lora_parameter_count,
)
from processor.adapters.diffusers.tiny_model import save_tiny_lora
from processor.domain.cost import cost_of
from processor.domain.errors import InvalidInput
from processor.domain.request import EditParams
from processor.domain.rules import COST_LORA_LOAD
from processor.domain.speed import LoraChoice, parse_loras
from tests.conftest import fresh_process_digest

REPO = Path(__file__).resolve().parents[1]
NAMES = ("ink", "watercolor", "pixel-art")


def picture() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 40, 90))


def digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def params(*loras: LoraChoice, **overrides: object) -> EditParams:
    return EditParams(prompt="make it blue", seed=7, num_inference_steps=2, loras=loras, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def allowlist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AllowedLora]:
    folder = tmp_path_factory.mktemp("loras")
    return {
        name: AllowedLora(
            name,
            LoraSource.parse(str(save_tiny_lora(folder / f"{name}.safetensors", seed=100 + index))),
            scale=0.8,
        )
        for index, name in enumerate(NAMES)
    }


@pytest.fixture
def editor(tiny_model_dir: Path, allowlist: dict[str, AllowedLora]) -> DiffusersEditor:
    return DiffusersEditor.load(tiny_model_dir, device="cpu", loras=allowlist, lora_cache_size=2)


def test_two_adapters_differ_and_the_base_after_them_is_a_fresh_processes(
    editor: DiffusersEditor, tiny_model_dir: Path
) -> None:
    base = digest(editor.edit([picture()], params()).image)
    ink = editor.edit([picture()], params(LoraChoice("ink")))
    watercolor = editor.edit([picture()], params(LoraChoice("watercolor", 1.5)))
    assert len({base, digest(ink.image), digest(watercolor.image)}) == 3
    assert ink.metadata()["loras"] == [{"name": "ink", "scale": 0.8}]  # the allowlist's default scale
    assert watercolor.metadata()["loras"] == [{"name": "watercolor", "scale": 1.5}]
    both = editor.edit([picture()], params(LoraChoice("ink", 0.5), LoraChoice("watercolor", 0.5)))
    assert both.metadata()["loras"] == [{"name": "ink", "scale": 0.5}, {"name": "watercolor", "scale": 0.5}]
    assert digest(both.image) not in {digest(ink.image), digest(watercolor.image)}
    # The same adapter at the same scale again gives the same bytes (activation is per edit).
    assert digest(editor.edit([picture()], params(LoraChoice("ink"))).image) == digest(ink.image)
    after = digest(editor.edit([picture()], params()).image)
    assert after == base == fresh_process_digest(tiny_model_dir, seed=7, steps=2)


def test_an_unknown_lora_is_refused_before_the_model_runs(editor: DiffusersEditor) -> None:
    with pytest.raises(InvalidInput, match="unknown LoRA") as refused:
        editor.edit([picture()], params(LoraChoice("not-allowed")))
    assert refused.value.reason == "unknown_lora"
    assert editor.adapters.resident() == []


def test_adapters_beyond_the_bound_are_evicted_not_leaked(editor: DiffusersEditor) -> None:
    transformer = editor.pipeline.transformer
    assert lora_parameter_count(transformer) == 0
    editor.edit([picture()], params(LoraChoice("ink")))
    one = lora_parameter_count(transformer)
    editor.edit([picture()], params(LoraChoice("watercolor")))
    assert lora_parameter_count(transformer) == 2 * one
    editor.edit([picture()], params(LoraChoice("pixel-art")))  # a third: ink (least recent) goes
    assert editor.adapters.resident() == ["watercolor", "pixel-art"]
    assert editor.adapters.evictions == 1 and editor.adapters.loads == 3
    assert lora_parameter_count(transformer) == 2 * one
    assert set(transformer.peft_config) == {adapter_name("watercolor"), adapter_name("pixel-art")}
    editor.edit([picture()], params(LoraChoice("watercolor")))  # resident: no load, refreshed
    editor.edit([picture()], params(LoraChoice("ink")))  # evicts pixel-art now
    assert editor.adapters.resident() == ["watercolor", "ink"]
    assert (editor.adapters.loads, editor.adapters.evictions) == (4, 2)
    assert lora_parameter_count(transformer) == 2 * one


def test_more_allowlisted_loras_than_the_cache_keeps_are_charged_and_said(
    allowlist: dict[str, AllowedLora], caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 22: LoRAs named in turn past the cache load on every edit. Each request is charged a load
    # for every LoRA it names, resident or not (the charge cannot depend on others' requests)...
    one = cost_of(params(LoraChoice("ink")), 1)
    assert one - cost_of(params(), 1) > COST_LORA_LOAD
    # ...and the operator is told at start-up when the allowlist is larger than the cache.
    with caplog.at_level(logging.WARNING, logger="processor.adapters.diffusers.loras"):
        AdapterCache(None, allowlist, max_resident=len(allowlist) - 1)
    assert "load one on every edit" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="processor.adapters.diffusers.loras"):
        AdapterCache(None, allowlist, max_resident=len(allowlist))
    assert caplog.text == ""


def test_a_request_may_not_need_more_adapters_than_the_cache_keeps(editor: DiffusersEditor) -> None:
    with pytest.raises(InvalidInput, match="at most 2 loaded"):
        editor.edit([picture()], params(*(LoraChoice(name) for name in NAMES)))


def test_request_lora_lists_are_checked() -> None:
    assert parse_loras([{"name": "ink", "scale": 0.5}, "watercolor"]) == (
        LoraChoice("ink", 0.5),
        LoraChoice("watercolor"),
    )
    for bad, message in (
        ("ink", "list"),
        ([{"name": "Ink!"}], "invalid LoRA name"),
        ([{"name": "ink"}, {"name": "ink"}], "twice"),
        ([{"name": "ink", "scale": 9}], "scale must be"),
        ([{"name": "ink", "weight": 1}], "name, scale"),
        ([{"name": f"l{i}"} for i in range(4)], "at most 3"),
    ):
        with pytest.raises(InvalidInput, match=message):
            parse_loras(bad)


def test_an_allowlisted_lora_that_cannot_load_fails_the_edit_not_the_editor(
    tiny_model_dir: Path, allowlist: dict[str, AllowedLora], tmp_path: Path
) -> None:
    from processor.domain.errors import ModelError

    broken = AllowedLora("gone", LoraSource(str(tmp_path), weight_name="gone.safetensors"))
    editor = DiffusersEditor.load(tiny_model_dir, device="cpu", loras={**allowlist, "gone": broken})
    with pytest.raises(ModelError, match="cannot load the LoRA") as failed:
        editor.edit([picture()], params(LoraChoice("gone")))
    assert failed.value.reason == "lora_unavailable"
    assert editor.adapters.resident() == []
    assert editor.edit([picture()], params(LoraChoice("ink"))).metadata()["loras"] == [
        {"name": "ink", "scale": 0.8}
    ]
