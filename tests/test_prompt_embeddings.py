"""Qwen2.5-VL's 3D rotary positions reach the text encoder (the ``mm_token_type_ids`` fix).

transformers 5.x builds 3D positions only when ``mm_token_type_ids`` is passed, and
diffusers 0.42.1 does not pass it (diffusers #14194). ``compat.install_mrope_fix``
supplies it. The reference here is the text encoder called with 3D position ids built
explicitly by ``get_rope_index``, which is what transformers 4.57 computed by itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from processor.adapters.diffusers.compat import install_mrope_fix
from processor.adapters.diffusers.engine import DiffusersEditor

PROMPT = "make the sky blue"


def condition_images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(count)]


def embeddings(pipeline: Any, images: list[Image.Image]) -> torch.Tensor:
    with torch.inference_mode():
        prompt_embeds, _ = pipeline.encode_prompt(PROMPT, image=images, device=torch.device("cpu"))
    return prompt_embeds  # type: ignore[no-any-return]


def reference_embeddings(pipeline: Any, images: list[Image.Image]) -> torch.Tensor:
    """The text encoder's last hidden states with explicitly built 3D positions, prefix dropped."""
    slots = "".join(
        f"Picture {i}: <|vision_start|><|image_pad|><|vision_end|>" for i in range(1, len(images) + 1)
    )
    text = pipeline.prompt_template_encode.format(slots + PROMPT)
    inputs = pipeline.processor(text=[text], images=images, padding=True, return_tensors="pt")
    encoder = pipeline.text_encoder
    with torch.inference_mode():
        positions, _ = encoder.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        hidden = encoder(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            position_ids=positions,
            output_hidden_states=True,
        ).hidden_states[-1]
    # 3D positions really differ from 1D ones here, or this test could not tell the two apart.
    assert not torch.equal(positions[1], positions[2])
    return hidden[:, pipeline.prompt_template_encode_start_idx :]


@pytest.fixture
def stock_pipeline(tiny_model_dir: Path) -> Any:
    """The same weights through diffusers' pipeline as shipped (no fix)."""
    from diffusers import QwenImageEditPlusPipeline

    return QwenImageEditPlusPipeline.from_pretrained(str(tiny_model_dir), dtype=torch.float32)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_the_engines_prompt_embeddings_use_3d_positions(tiny_editor: DiffusersEditor, count: int) -> None:
    images = condition_images(count)
    fixed = embeddings(tiny_editor.pipeline, images)
    assert torch.equal(fixed, reference_embeddings(tiny_editor.pipeline, images))


@pytest.mark.parametrize("count", [1, 2])
def test_the_pipeline_as_shipped_computes_different_embeddings(stock_pipeline: Any, count: int) -> None:
    images = condition_images(count)
    difference = (
        (embeddings(stock_pipeline, images) - reference_embeddings(stock_pipeline, images)).abs().max()
    )
    assert difference > 1e-5  # measured 2.4e-4 (1 image) with the tiny model


def test_the_fix_is_idempotent_and_repairs_the_shipped_pipeline(stock_pipeline: Any) -> None:
    encoder = stock_pipeline.text_encoder
    hooks_before = len(encoder._forward_pre_hooks)
    assert install_mrope_fix(encoder) and install_mrope_fix(encoder)
    assert len(encoder._forward_pre_hooks) == hooks_before + 1
    images = condition_images(1)
    assert torch.equal(embeddings(stock_pipeline, images), reference_embeddings(stock_pipeline, images))


def test_the_fix_never_overrides_a_value_the_caller_passes(stock_pipeline: Any) -> None:
    images = condition_images(1)
    text = stock_pipeline.prompt_template_encode.format(
        f"Picture 1: <|vision_start|><|image_pad|><|vision_end|>{PROMPT}"
    )
    inputs = dict(stock_pipeline.processor(text=[text], images=images, return_tensors="pt"))
    inputs["mm_token_type_ids"] = torch.zeros_like(inputs["mm_token_type_ids"])  # "all text": 1D positions
    encoder = stock_pipeline.text_encoder
    with torch.inference_mode():
        unfixed = encoder(**inputs, output_hidden_states=True).hidden_states[-1]
        install_mrope_fix(encoder)
        explicit = encoder(**inputs, output_hidden_states=True).hidden_states[-1]
        derived = encoder(**{**inputs, "mm_token_type_ids": None}, output_hidden_states=True).hidden_states[
            -1
        ]
    assert torch.equal(explicit, unfixed)
    assert not torch.equal(derived, unfixed)
