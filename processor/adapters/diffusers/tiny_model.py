"""A tiny, randomly initialised Qwen-Image-Edit-2509 pipeline for tests, CI and local runs.

It has the real pipeline's classes (``QwenImageTransformer2DModel``,
``AutoencoderKLQwenImage``, ``Qwen2_5_VLForConditionalGeneration``, ``Qwen2Tokenizer``,
``Qwen2VLProcessor``, ``FlowMatchEulerDiscreteScheduler`` with the real scheduler
config) at a few hundred thousand parameters, built offline (about 4 s of CPU time, 6 s
with the imports; docs/engine.md) and saved with ``save_pretrained`` (about 3.5 MB), so
that it loads through exactly the same ``from_pretrained`` path as the real checkpoint. Its output is structured noise: test
shapes, sizes and determinism with it, never content.

Choices that matter:

* **Tokenizer**: byte-level with no merges (every UTF-8 byte is a token) plus the 14
  Qwen special tokens, registered as special so ``<|image_pad|>`` stays one token. No
  training and no files needed. The system prefix of the prompt template is then 320
  tokens instead of the real tokenizer's 64; the pipeline drops the first 64
  (``prompt_template_encode_start_idx``), so about 256 system-prompt tokens stay in the
  prompt embeddings. That is harmless (no user or image token is lost) and keeps the
  pipeline's code path unchanged; a trained BPE could make the prefix shorter than 64,
  and the drop would then eat image and prompt tokens.
* **Sizes**: the pipeline resizes every input to a 1024² area for the VAE and a 384²
  area for the vision encoder, via module globals. The builder writes
  ``edit_processor.json`` (``sizing.ModelSizing``) with 64² areas, which the engine applies, so
  a 2-step tiny edit takes about a tenth of a second on a laptop CPU.
* **Determinism**: every module is built after ``torch.manual_seed(0)``, so the saved
  folder is the same on every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from processor.adapters.diffusers.compat import allow_processor_without_torchvision, torchvision_available
from processor.domain.sizing import SIZING_FILE, ModelSizing

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""The special tokens of Qwen2.5-VL's tokenizer, in its id order."""

# The scheduler config every Qwen-Image checkpoint ships (the real one, not the class defaults).
QWEN_IMAGE_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}

_TINY_AREA = 64 * 64
_VISION_PATCH, _TEMPORAL_PATCH, _MERGE = 14, 2, 2


TINY_SIZING = ModelSizing(vae_image_area=_TINY_AREA, condition_image_area=_TINY_AREA, output_area=_TINY_AREA)


def build_tiny_pipeline(*, zero_cond_t: bool = False) -> Any:
    """A randomly initialised ``QwenImageEditPlusPipeline``; deterministic, offline, float32.

    ``zero_cond_t=True`` gives it the shape of Qwen-Image-Edit-2511, whose transformer config
    differs from 2509's in that flag (the conditioning image tokens get a zero timestep).
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )

    processor = _build_processor()
    token_ids = {token: processor.tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    hidden = 16  # text hidden size = vision out_hidden_size = transformer joint_attention_dim

    torch.manual_seed(0)
    text_encoder = _build_text_encoder(token_ids, hidden, vocab_size=len(processor.tokenizer))
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,  # 4 × z_dim: latents are packed 2×2
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=hidden,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),  # sums to attention_head_dim
        zero_cond_t=zero_cond_t,
    )
    torch.manual_seed(0)
    # 8× spatial compression like the real VAE (three down-sampling stages).
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG)
    return QwenImageEditPlusPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=processor.tokenizer,
        processor=processor,
        transformer=transformer,
    )


def save_tiny_model(directory: str | Path, *, zero_cond_t: bool = False) -> Path:
    """Build the tiny pipeline and save it (plus ``edit_processor.json``) into ``directory``."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    pipeline = build_tiny_pipeline(zero_cond_t=zero_cond_t)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Writing model shards" bars for a 3 MB folder
    pipeline.save_pretrained(str(target))
    if not torchvision_available():
        _add_video_processor_config(target / "processor" / "processor_config.json")
    (target / SIZING_FILE).write_text(TINY_SIZING.to_json() + "\n")
    return target


def _add_video_processor_config(path: Path) -> None:
    """Give a processor saved without torchvision the video part it would have had with it.

    transformers with torchvision requires a video processor config to load the
    processor; the pipeline never uses it. Same sizes as the image processor.
    """
    config = json.loads(path.read_text())
    video = {key: value for key, value in config["image_processor"].items() if key != "image_processor_type"}
    config["video_processor"] = {**video, "video_processor_type": "Qwen2VLVideoProcessor"}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _build_processor() -> Any:
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor

    allow_processor_without_torchvision()
    vocab = {symbol: index for index, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        bos_token=None,
        # Registering them as special keeps each one a single token (otherwise split into bytes).
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    # A 64×64 condition image becomes 56×56 = 4×4 patches = 4 image tokens after the 2×2 merge.
    vision_sizes = {
        "min_pixels": 28 * 28,
        "max_pixels": _TINY_AREA,
        "patch_size": _VISION_PATCH,
        "temporal_patch_size": _TEMPORAL_PATCH,
        "merge_size": _MERGE,
    }
    image_processor = Qwen2VLImageProcessor(**vision_sizes)
    if not torchvision_available():
        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)
    from transformers import Qwen2VLVideoProcessor

    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**vision_sizes),
    )


def _build_text_encoder(token_ids: dict[str, int], hidden: int, vocab_size: int) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": (vocab_size + 15) // 16 * 16,
            "hidden_size": hidden,
            "intermediate_size": hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            # mrope_section sums to head_dim / 2 = (16 / 2) / 2
            "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e6},
            "bos_token_id": token_ids["<|endoftext|>"],
            "eos_token_id": token_ids["<|im_end|>"],
            "pad_token_id": token_ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": hidden,
            "intermediate_size": hidden,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": _VISION_PATCH,
            "spatial_merge_size": _MERGE,
            "temporal_patch_size": _TEMPORAL_PATCH,
            "fullatt_block_indexes": [1],
        },
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    return Qwen2_5_VLForConditionalGeneration(config)


LIGHTNING_LORA_MODULES = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
    "img_mod.1",
    "txt_mod.1",
)
"""Block modules the tiny LoRAs adapt (the linears of a ``QwenImageTransformerBlock``)."""


def tiny_lora_state_dict(
    *, seed: int, rank: int = 4, alpha: float = 2.0, strength: float = 0.5, layout: str = "lightning"
) -> dict[str, torch.Tensor]:
    """A random LoRA for the tiny transformer, in a published key layout.

    ``layout="lightning"``: the layout of the lightx2v Qwen-Image(-Edit) Lightning
    safetensors, ``transformer_blocks.{i}.{module}.lora_down.weight`` / ``.lora_up.weight`` /
    ``.alpha`` (alpha 8 at rank 64 there; sglang#17086, DiffSynth-Studio#1241). It is the
    layout diffusers' ``QwenImageLoraLoaderMixin.lora_state_dict`` converts when ``.alpha``
    keys are present (``_convert_non_diffusers_qwen_lora_to_diffusers``, added for these
    files in diffusers PR #12119), folding ``alpha / rank`` into the weights.
    ``layout="diffusers"``: ``….lora_A.weight`` / ``….lora_B.weight`` with no alpha.
    """
    generator = torch.Generator().manual_seed(seed)
    shapes = _tiny_linear_shapes()
    tensors: dict[str, torch.Tensor] = {}
    for block in range(2):
        for module in LIGHTNING_LORA_MODULES:
            in_features, out_features = shapes[module]
            down = torch.randn(rank, in_features, generator=generator) * strength
            up = torch.randn(out_features, rank, generator=generator) * strength
            key = f"transformer_blocks.{block}.{module}"
            if layout == "lightning":
                tensors[f"{key}.lora_down.weight"] = down
                tensors[f"{key}.lora_up.weight"] = up
                tensors[f"{key}.alpha"] = torch.tensor(alpha)
            else:
                tensors[f"{key}.lora_A.weight"] = down
                tensors[f"{key}.lora_B.weight"] = up
    return tensors


def save_tiny_lora(path: str | Path, *, seed: int, **kwargs: Any) -> Path:
    """Write ``tiny_lora_state_dict`` as a ``.safetensors`` file (what ``LORAS`` / Lightning settings point at)."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tiny_lora_state_dict(seed=seed, **kwargs).items()}, str(target))
    return target


def _tiny_linear_shapes() -> dict[str, tuple[int, int]]:
    """``(in_features, out_features)`` of each adapted module in the tiny transformer (dim 48)."""
    dim = 16 * 3  # attention_head_dim × num_attention_heads
    shapes = dict.fromkeys(LIGHTNING_LORA_MODULES, (dim, dim))
    for stream in ("img", "txt"):
        shapes[f"{stream}_mlp.net.0.proj"] = (dim, 4 * dim)
        shapes[f"{stream}_mlp.net.2"] = (4 * dim, dim)
        shapes[f"{stream}_mod.1"] = (dim, 6 * dim)
    return shapes
