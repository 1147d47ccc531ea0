"""Two fixes to the diffusers 0.42.1 / transformers 5.x pair that Qwen-Image-Edit-2509 needs.

1. **3D rotary positions in the text encoder** (``install_mrope_fix``). Qwen2.5-VL gives
   image tokens 3D (time, row, column) rotary positions and shifts the text after them.
   transformers 5.x builds those positions only when the forward call receives
   ``mm_token_type_ids``; otherwise it silently falls back to plain 1D positions.
   diffusers 0.42.1's ``QwenImageEditPlusPipeline._get_qwen_prompt_embeds`` does not pass
   it (diffusers issue #14194), so every prompt embedding would be computed with the
   wrong positions. transformers 4.x derived the same information from ``input_ids``.
   The fix is a forward pre-hook on the text encoder that adds ``mm_token_type_ids``,
   derived from ``input_ids`` exactly as the processor derives it, whenever the caller
   left it out. It changes nothing once diffusers forwards the value itself.

2. **Processors without torchvision** (``allow_processor_without_torchvision``).
   transformers 5.x's ``Qwen2VLProcessor`` requires a video processor, and the video
   processor requires torchvision; without torchvision the processor can be neither
   built, saved nor loaded (transformers #43986). The pipeline only ever passes images,
   so on hosts without torchvision we drop the video part from the processor's
   attribute list. With torchvision installed (production and CI) nothing is changed.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

_TEXT, _IMAGE, _VIDEO = 0, 1, 2  # the token types Qwen2VLProcessor.create_mm_token_type_ids uses
_HOOK_MARK = "_edit_processor_mrope_fix"


def install_mrope_fix(text_encoder: Any) -> bool:
    """Make ``text_encoder`` (a ``Qwen2_5_VLForConditionalGeneration``) see ``mm_token_type_ids``.

    Idempotent. Returns whether the hook is installed: False for transformers versions
    whose forward has no such argument (4.x computes 3D positions from ``input_ids``).
    """
    if getattr(text_encoder, _HOOK_MARK, False):
        return True
    if "mm_token_type_ids" not in inspect.signature(text_encoder.forward).parameters:
        return False
    config = text_encoder.config
    image_token_id = int(config.image_token_id)
    video_token_id = int(config.video_token_id)

    def add_token_types(
        _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        input_ids = kwargs.get("input_ids")
        has_vision = kwargs.get("image_grid_thw") is not None or kwargs.get("video_grid_thw") is not None
        if kwargs.get("mm_token_type_ids") is not None or input_ids is None or not has_vision:
            return None
        token_types = torch.full_like(input_ids, _TEXT)
        token_types[input_ids == image_token_id] = _IMAGE
        token_types[input_ids == video_token_id] = _VIDEO
        return args, {**kwargs, "mm_token_type_ids": token_types}

    text_encoder.register_forward_pre_hook(add_token_types, with_kwargs=True)
    setattr(text_encoder, _HOOK_MARK, True)
    return True


def torchvision_available() -> bool:
    """Whether transformers can use torchvision (it checks once per process)."""
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


def allow_processor_without_torchvision() -> bool:
    """Let ``Qwen2VLProcessor`` be built, saved and loaded without its video processor.

    A no-op when torchvision is available. Otherwise it narrows the class's attribute
    list process-wide, once; returns whether it did so. Call it before building or
    loading a processor.
    """
    if torchvision_available():
        return False
    from transformers import Qwen2VLProcessor

    if getattr(Qwen2VLProcessor, _HOOK_MARK, False):
        return True
    original = Qwen2VLProcessor.get_attributes.__func__

    def get_attributes(cls: type) -> list[str]:
        return [name for name in original(cls) if name != "video_processor"]

    Qwen2VLProcessor.get_attributes = classmethod(get_attributes)
    setattr(Qwen2VLProcessor, _HOOK_MARK, True)
    log.warning("torchvision is not installed: Qwen2VLProcessor runs without its (unused) video processor")
    return True
