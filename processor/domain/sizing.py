"""Sizes: the model's output-size rule, explicit-size validation and per-model areas.

Qwen-Image-Edit-2509 (diffusers' ``QwenImageEditPlusPipeline``) works at fixed pixel
areas whatever the input resolution: the output is about one megapixel at the aspect
ratio of the **last** input image, each side rounded to a multiple of 32 and then
floored to a multiple of 16. Inputs are resized to a 1024² area for the VAE and a 384²
area for the vision-language encoder. This module reproduces that rule (pure Python, no
torch), so callers can know the output size before an edit, and validates explicit sizes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from processor.domain.errors import InvalidInput
from processor.domain.reasons import ReasonCode
from processor.domain.rules import MAX_OUTPUT_PIXELS, MAX_OUTPUT_SIDE, MIN_OUTPUT_SIDE, SIZE_MULTIPLE

SIZING_FILE = "edit_processor.json"
"""Optional file in a model folder with its ``ModelSizing`` (the tiny model has one; the real model not)."""

MAX_VISION_ASPECT_RATIO = 200
"""Qwen2-VL's image processor refuses longer/shorter side ratios beyond this."""


@dataclass(frozen=True, slots=True)
class ModelSizing:
    """Pixel areas a model works at; the defaults are Qwen-Image-Edit-2509's own.

    ``vae_image_area`` and ``condition_image_area`` are what every input is resized to for
    the VAE and for the vision-language encoder; ``output_area`` sets the default output
    size. Each keeps the image's aspect ratio.
    """

    vae_image_area: int = 1024 * 1024
    condition_image_area: int = 384 * 384
    output_area: int = 1024 * 1024

    @classmethod
    def for_model(cls, model: str | Path) -> ModelSizing:
        """The sizing in ``model``'s ``edit_processor.json`` when it is a folder with one, else the defaults."""
        path = Path(model) / SIZING_FILE
        if not path.is_file():
            return cls()
        values = json.loads(path.read_text())
        sizing = cls(**{name: int(values[name]) for name in cls.__slots__ if name in values})
        if min(sizing.vae_image_area, sizing.condition_image_area, sizing.output_area) < 32 * 32:
            raise ValueError(f"{path}: every area must be at least 32×32 pixels")
        return sizing

    def to_json(self) -> str:
        return json.dumps(
            {
                "vae_image_area": self.vae_image_area,
                "condition_image_area": self.condition_image_area,
                "output_area": self.output_area,
            },
            indent=2,
        )


def dimensions_for_area(area: int, width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` of about ``area`` pixels at ``width/height``, sides rounded to multiples of 32.

    The same arithmetic as diffusers' ``calculate_dimensions`` (height comes from the
    unrounded width). A side can round to 0 for extreme aspect ratios; callers check.
    """
    ratio = width / height
    exact_width = math.sqrt(area * ratio)
    exact_height = exact_width / ratio
    return round(exact_width / 32) * 32, round(exact_height / 32) * 32


def default_output_size(last_image_size: tuple[int, int], sizing: ModelSizing) -> tuple[int, int]:
    """The model's own output size for inputs whose last image is ``(width, height)``."""
    width, height = dimensions_for_area(sizing.output_area, *last_image_size)
    return width // SIZE_MULTIPLE * SIZE_MULTIPLE, height // SIZE_MULTIPLE * SIZE_MULTIPLE


def output_size(
    image_sizes: list[tuple[int, int]],
    sizing: ModelSizing,
    width: int | None = None,
    height: int | None = None,
) -> tuple[int, int]:
    """The ``(width, height)`` an edit of images of ``image_sizes`` produces; raises ``InvalidInput``.

    Without ``width``/``height`` it is the model's rule (``default_output_size`` of the
    last image; with no image, the model's native square, the canvas a creation starts from).
    Explicit sizes come as a pair following ``rules``' size rule (sides multiples of
    ``SIZE_MULTIPLE`` from ``MIN_OUTPUT_SIDE`` to ``MAX_OUTPUT_SIDE``, at most ``MAX_OUTPUT_PIXELS``); they are refused rather than rounded, so the caller
    always gets exactly the size asked for. (Explicit sizes do not change how the inputs
    are resized for the VAE: an output far from one megapixel looks zoomed, see diffusers
    PR #12453.) Every input must also survive the model's own resizing at its aspect
    ratio (``check_input_shapes``).
    """
    check_input_shapes(image_sizes, sizing)
    if width is None and height is None:
        if not image_sizes:
            # Creation without an input: the model's native square (1024×1024 for the real model).
            return default_output_size((1, 1), sizing)
        result = default_output_size(image_sizes[-1], sizing)
        if min(result) < SIZE_MULTIPLE:
            raise InvalidInput(
                f"the last image's aspect ratio ({image_sizes[-1][0]}×{image_sizes[-1][1]}) is too extreme "
                "for this model's output size; pass width and height",
                reason=ReasonCode.INVALID_SIZE,
            )
        return result
    if width is None or height is None:
        raise InvalidInput("give both width and height, or neither", reason=ReasonCode.INVALID_SIZE)
    for name, side in (("width", width), ("height", height)):
        if not MIN_OUTPUT_SIDE <= side <= MAX_OUTPUT_SIDE or side % SIZE_MULTIPLE:
            raise InvalidInput(
                f"{name} {side} must be a multiple of {SIZE_MULTIPLE} between {MIN_OUTPUT_SIDE} "
                f"and {MAX_OUTPUT_SIDE}",
                reason=ReasonCode.INVALID_SIZE,
            )
    if width * height > MAX_OUTPUT_PIXELS:
        raise InvalidInput(
            f"{width}×{height} is {width * height:,} pixels; the limit is {MAX_OUTPUT_PIXELS:,}",
            reason=ReasonCode.INVALID_SIZE,
        )
    return width, height


def check_input_shapes(image_sizes: list[tuple[int, int]], sizing: ModelSizing) -> None:
    """Refuse inputs whose aspect ratio the pipeline's own resizing cannot handle."""
    for number, (width, height) in enumerate(image_sizes, start=1):
        condition = dimensions_for_area(sizing.condition_image_area, width, height)
        vae = dimensions_for_area(sizing.vae_image_area, width, height)
        if min(*condition, *vae) < 32 or max(condition) / min(condition) > MAX_VISION_ASPECT_RATIO:
            raise InvalidInput(
                f"image {number} ({width}×{height}) has too extreme an aspect ratio for this model",
                reason=ReasonCode.INVALID_SIZE,
            )
