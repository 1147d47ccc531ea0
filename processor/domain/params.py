"""What every editor accepts: limits on parameters and images, checked before any model runs.

Shared by the diffusers engine and the ComfyUI engine (and the CLI's early checks), so a
request is refused with the same reason code whichever engine would have run it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from processor.domain.errors import InvalidInput
from processor.domain.images import base_canvas, parse_hex_colour, to_rgb
from processor.domain.ports import BaseCanvas, EditParams, EditResult
from processor.domain.sizing import ModelSizing, output_size

MAX_IMAGES = 3
"""The model card: "optimal performance is achieved with 1 to 3 input images"."""
MIN_STEPS, MAX_STEPS = 2, 100
"""One step is refused: with Qwen-Image's scheduler config (``shift_terminal``) it yields NaN sigmas."""
MAX_CFG_SCALE = 20.0
MAX_PROMPT_CHARS = 4000
"""Nothing truncates the prompt downstream; this keeps the text sequence (and memory) bounded."""
MAX_SEED = 2**63 - 1
"""Seeds fit a Postgres ``bigint``; drawn seeds are below 2**31."""


def check_params(params: EditParams) -> None:
    """Raise ``InvalidInput`` (``invalid_prompt`` / ``invalid_parameter``) for parameters the engine refuses."""
    if not params.prompt.strip():
        raise InvalidInput("the prompt is empty", reason="invalid_prompt")
    for name, text in (("prompt", params.prompt), ("negative_prompt", params.negative_prompt)):
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidInput(
                f"{name} has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}", reason="invalid_prompt"
            )
    steps = params.num_inference_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise InvalidInput(
            f"num_inference_steps must be an integer from {MIN_STEPS} to {MAX_STEPS}, got {steps!r}",
            reason="invalid_parameter",
        )
    for name, value in (("true_cfg_scale", params.true_cfg_scale), ("guidance_scale", params.guidance_scale)):
        if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= MAX_CFG_SCALE):
            raise InvalidInput(
                f"{name} must be from 0 to {MAX_CFG_SCALE}, got {value!r}", reason="invalid_parameter"
            )
    if params.base not in ("blank", "noise"):
        raise InvalidInput(
            f"base must be 'blank' or 'noise', got {params.base!r}", reason="invalid_parameter"
        )
    parse_hex_colour(params.base_color)
    seed = params.seed
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
    ):
        raise InvalidInput(
            f"seed must be an integer from 0 to 2**63-1, got {seed!r}", reason="invalid_parameter"
        )


def check_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    """At most ``MAX_IMAGES``, each as RGB."""
    if len(images) > MAX_IMAGES:
        raise InvalidInput(
            f"{len(images)} images; at most {MAX_IMAGES} are supported", reason="too_many_images"
        )
    return [to_rgb(image) for image in images]


def draw_seed(params: EditParams) -> int:
    """The request's seed, or a fresh one (below 2**31, so every engine and client can hold it)."""
    return params.seed if params.seed is not None else secrets.randbelow(2**31)


@dataclass(frozen=True, slots=True)
class PreparedEdit:
    """Validated inputs for one edit: the images to condition on (a base canvas when the
    request had none), the output size, the seed, and which canvas was built."""

    images: list[Image.Image]
    width: int
    height: int
    seed: int
    base: BaseCanvas | None


def prepare_edit(images: Sequence[Image.Image], params: EditParams, sizing: ModelSizing) -> PreparedEdit:
    """Check everything an engine would refuse, then settle size, seed and canvas. Raises ``InvalidInput``."""
    inputs = check_images(images)
    width, height = output_size([image.size for image in inputs], sizing, params.width, params.height)
    check_params(params)
    seed = draw_seed(params)
    if inputs:
        return PreparedEdit(inputs, width, height, seed, None)
    canvas = base_canvas(params.base, width, height, seed=seed, colour=params.base_color)
    return PreparedEdit([canvas], width, height, seed, params.base)


def generation_text(params: EditParams, result: EditResult) -> dict[str, str]:
    """The generation parameters as PNG text chunks (``images.encode_image(..., text=...)``)."""
    return {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "seed": str(result.seed),
        "num_inference_steps": str(result.num_inference_steps),
        "true_cfg_scale": str(params.true_cfg_scale),
        "guidance_scale": str(params.guidance_scale),
        "width": str(result.width),
        "height": str(result.height),
        "model": str(result.model.get("model_id", "")),
        "model_revision": str(result.model.get("revision") or ""),
    }
