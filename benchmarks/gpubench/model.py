"""The model the benchmark runs, built where it runs and never downloaded.

* Full size: Qwen-Image-Edit-2509's architecture (the 60-block 20 B transformer, the Qwen2.5-VL-7B
  text and vision encoder, the Qwen-Image VAE) with random bfloat16 weights allocated and
  initialised directly on the device (``meta`` for the dry run: shapes only, no memory);
  ``zero_cond_t`` gives 2511's transformer.
* Tiny: ``processor.adapters.diffusers.tiny_model``'s model (the CPU check of the script).
* A prompt tokenizer that gives the real prompt lengths: a word-level model over the byte-level
  pieces of Qwen's pre-tokenizer, so each piece of the template and the prompt is one token as in
  Qwen's 151k-token vocabulary. The pipeline drops the first 64 tokens of the prompt template (the
  real tokenizer's system prefix); this tokenizer's prefix is 64 tokens too (tested), so the
  transformer sees about 220 text tokens, where the tiny model's byte tokenizer gave 560.
* The Lightning LoRAs as random rank-64 state dicts in the published key layout, built in memory
  on the device and loaded through diffusers' ``load_lora_weights`` (no 2.2 GiB of files).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from processor.adapters.diffusers.loras import LoraSource
from processor.adapters.diffusers.presets import LIGHTNING_ADAPTERS
from processor.adapters.diffusers.tiny_model import (
    LIGHTNING_LORA_MODULES,
    QWEN_IMAGE_SCHEDULER_CONFIG,
    QWEN_SPECIAL_TOKENS,
    tiny_lora_state_dict,
)

PROMPT = "Replace the background with a sunny beach and keep the subject unchanged."
NEGATIVE_PROMPT = " "
"""The model card's negative prompt for true CFG."""

TRANSFORMER_CONFIG: Mapping[str, Any] = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}
"""``Qwen/Qwen-Image-Edit-2509`` ``transformer/config.json``."""

LORA_RANK, LORA_ALPHA = 64, 8.0
"""The published Lightning files: rank 64, alpha 8 (sglang#17086, DiffSynth-Studio#1241)."""

# The template of diffusers' QwenImageEditPlusPipeline (``prompt_template_encode``) and the picture
# label it puts before each image; the tokenizer is built so that these pieces are whole tokens.
TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
    "objects, background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining consistency "
    "with the original input where appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
PICTURE = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
TEMPLATE_DROP = 64
"""``prompt_template_encode_start_idx``: tokens the pipeline drops (the real system prefix)."""


def prompt_tokenizer() -> Any:
    """A ``Qwen2Tokenizer`` with Qwen's 14 special tokens and one token per pre-tokenized piece of the
    template, the prompt and the negative prompt (anything else is ``<|endoftext|>``, one token per
    piece as well)."""
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {symbol: index for index, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    for token in QWEN_SPECIAL_TOKENS:  # ids 256-269, as the tiny model's byte tokenizer has them
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=[],
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        bos_token=None,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
    specials = "(" + "|".join(re.escape(token) for token in QWEN_SPECIAL_TOKENS) + ")"
    for prompt in (PROMPT, NEGATIVE_PROMPT):
        for part in re.split(specials, TEMPLATE.format(PICTURE + prompt)):
            if part and part not in QWEN_SPECIAL_TOKENS:
                for piece, _ in pre_tokenizer.pre_tokenize_str(part):
                    vocab.setdefault(piece, len(vocab))
    tokenizer.backend_tokenizer.model = WordLevel(vocab, unk_token="<|endoftext|>")
    return tokenizer


def _processor(tokenizer: Any, like: Any = None) -> Any:
    """A ``Qwen2VLProcessor`` with ``tokenizer``, and the image (and video) processors of ``like`` or
    the real model's defaults."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    from processor.adapters.diffusers.compat import (
        allow_processor_without_torchvision,
        torchvision_available,
    )

    allow_processor_without_torchvision()
    image_processor = like.image_processor if like is not None else Qwen2VLImageProcessor()
    if not torchvision_available():
        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)
    from transformers import Qwen2VLVideoProcessor

    video = getattr(like, "video_processor", None) if like is not None else Qwen2VLVideoProcessor()
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video)


def full_size_processor() -> Any:
    """The full-size model's processor: the prompt tokenizer and Qwen2-VL's default image processor."""
    return _processor(prompt_tokenizer())


def full_size_components(device: torch.device, *, zero_cond_t: bool = False) -> dict[str, Any]:
    """Qwen-Image-Edit-2509's components at full size, random bf16 weights, built on ``device``."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = prompt_tokenizer()
    with building(device):
        text_encoder = Qwen2_5_VLForConditionalGeneration(text_encoder_config(tokenizer))
        transformer = QwenImageTransformer2DModel(**TRANSFORMER_CONFIG, zero_cond_t=zero_cond_t)
        vae = AutoencoderKLQwenImage()
    for module in (text_encoder, transformer, vae):
        module.eval().requires_grad_(False)
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "processor": _processor(tokenizer),  # the same as full_size_processor()
        "transformer": transformer,
    }


def text_encoder_config(tokenizer: Any) -> Any:
    """``Qwen2_5_VLConfig`` of Qwen2.5-VL-7B-Instruct (as the 2509 checkpoint's ``text_encoder``), with
    the special-token ids of ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


@contextmanager
def building(device: torch.device) -> Iterator[None]:
    """Modules created inside are allocated on ``device`` in bfloat16 and initialised there."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            yield
    finally:
        torch.set_default_dtype(previous)


def tiny_components(dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The tiny model's components with the prompt tokenizer (its text encoder's vocabulary widened to
    fit it), in ``dtype``."""
    from processor.adapters.diffusers.tiny_model import _build_text_encoder, build_tiny_pipeline

    components = dict(build_tiny_pipeline().components)
    tokenizer = prompt_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    torch.manual_seed(0)
    components["text_encoder"] = _build_text_encoder(ids, 16, vocab_size=len(tokenizer))
    components["tokenizer"], components["processor"] = (
        tokenizer,
        _processor(tokenizer, components["processor"]),
    )
    for name in ("text_encoder", "transformer", "vae"):
        components[name].to(dtype).eval().requires_grad_(False)
    return components


def block_linear_shapes(dim: int) -> dict[str, tuple[int, int]]:
    """``(in_features, out_features)`` of the linears of a ``QwenImageTransformerBlock`` of width ``dim``."""
    shapes = dict.fromkeys(LIGHTNING_LORA_MODULES, (dim, dim))
    for stream in ("img", "txt"):
        shapes[f"{stream}_mlp.net.0.proj"] = (dim, 4 * dim)
        shapes[f"{stream}_mlp.net.2"] = (4 * dim, dim)
        shapes[f"{stream}_mod.1"] = (dim, 6 * dim)
    return shapes


def lightning_state_dict(transformer: Any, *, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A random rank-64 LoRA on every block linear in the Lightning files' layout
    (``…lora_down.weight`` / ``…lora_up.weight`` / ``…alpha``), built on ``device`` in bf16 (on
    ``meta``: shapes only). Small updates: random weights must stay finite through 60 blocks."""
    config = transformer.config
    dim = config.num_attention_heads * config.attention_head_dim
    generator = None if device.type == "meta" else torch.Generator(device).manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for block in range(config.num_layers):
        for module, (fan_in, fan_out) in block_linear_shapes(dim).items():
            key = f"transformer_blocks.{block}.{module}"
            down = torch.randn(LORA_RANK, fan_in, generator=generator, device=device) * fan_in**-0.5
            up = torch.randn(fan_out, LORA_RANK, generator=generator, device=device) * 1e-3
            tensors[f"{key}.lora_down.weight"] = down.to(torch.bfloat16)
            tensors[f"{key}.lora_up.weight"] = up.to(torch.bfloat16)
            tensors[f"{key}.alpha"] = torch.tensor(
                LORA_ALPHA
            )  # a host scalar: diffusers reads it with .item()
    return tensors


def load_lightning(
    components: Mapping[str, Any], *, tiny: bool, device: torch.device
) -> dict[str, LoraSource]:
    """Build the 8- and 4-step LoRAs in memory and load them under the engine's pinned adapter names;
    the editor then finds them loaded. Returns the sources the editor records."""
    from diffusers import QwenImageEditPlusPipeline

    pipeline = QwenImageEditPlusPipeline(**components)
    sources = {}
    for preset, seed in (("fast", 8), ("fastest", 4)):
        if tiny:
            state = {key: value.to(device) for key, value in tiny_lora_state_dict(seed=seed).items()}
        else:
            state = lightning_state_dict(components["transformer"], seed=seed, device=device)
        pipeline.load_lora_weights(state, adapter_name=LIGHTNING_ADAPTERS[preset])  # type: ignore[index]
        rank = 4 if tiny else LORA_RANK
        sources[preset] = LoraSource(f"in-memory random rank-{rank} {preset} LoRA")
    return sources


def unload_loras(components: Mapping[str, Any]) -> bool:
    """Remove every LoRA layer from the transformer (the PEFT wrappers too); whether there were any."""
    from diffusers import QwenImageEditPlusPipeline

    if not getattr(components["transformer"], "peft_config", None):
        return False
    QwenImageEditPlusPipeline(**components).unload_lora_weights()
    return True


def parameters(module: torch.nn.Module) -> tuple[int, int]:
    """``(elements, bytes)`` of a module's parameters and buffers (exact on ``meta`` too)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)
