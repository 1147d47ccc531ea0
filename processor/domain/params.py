"""What every editor accepts: limits on parameters and images, checked before any model runs.

Shared by the diffusers engine and the ComfyUI engine (and the CLI's early checks), so a
request is refused with the same reason code whichever engine would have run it.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from processor.domain.errors import InvalidInput
from processor.domain.images import base_canvas, decode_base64_image, parse_hex_colour, to_rgb
from processor.domain.ports.editor import EditResult
from processor.domain.reasons import ReasonCode
from processor.domain.request import EditParams
from processor.domain.rules import (
    BASES,
    DRAWN_SEED_BOUND,
    MAX_BATCH_SIZE,
    MAX_CFG_SCALE,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MIN_STEPS,
    PROMPT_WHITESPACE,
    Base,
)
from processor.domain.sizing import ModelSizing, output_size
from processor.domain.speed import check_speed, parse_loras


def check_params(params: EditParams) -> None:
    """Raise ``InvalidInput`` (``invalid_prompt`` / ``invalid_parameter``) for parameters the engine refuses."""
    if not isinstance(params.prompt, str) or not params.prompt.strip(PROMPT_WHITESPACE):
        raise InvalidInput("the prompt is empty", reason=ReasonCode.INVALID_PROMPT)
    for name, text in (("prompt", params.prompt), ("negative_prompt", params.negative_prompt)):
        if not isinstance(text, str):
            raise InvalidInput(f"{name} must be a string", reason=ReasonCode.INVALID_PROMPT)
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidInput(
                f"{name} has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}",
                reason=ReasonCode.INVALID_PROMPT,
            )
        if "\x00" in text:
            # Postgres text cannot hold NUL: refused here so no way in gets further than the row.
            raise InvalidInput(f"{name} may not contain NUL characters", reason=ReasonCode.INVALID_PROMPT)
    steps = params.num_inference_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise InvalidInput(
            f"num_inference_steps must be an integer from {MIN_STEPS} to {MAX_STEPS}, got {steps!r}",
            reason=ReasonCode.INVALID_PARAMETER,
        )
    for name, value in (("true_cfg_scale", params.true_cfg_scale), ("guidance_scale", params.guidance_scale)):
        if isinstance(value, bool) or not (
            isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= MAX_CFG_SCALE
        ):
            raise InvalidInput(
                f"{name} must be from 0 to {MAX_CFG_SCALE}, got {value!r}",
                reason=ReasonCode.INVALID_PARAMETER,
            )
    if params.base not in BASES:
        raise InvalidInput(
            f"base must be one of {', '.join(BASES)}, got {params.base!r}",
            reason=ReasonCode.INVALID_PARAMETER,
        )
    parse_hex_colour(params.base_color)
    seed = params.seed
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
    ):
        raise InvalidInput(
            f"seed must be an integer from 0 to 2**63-1 (leave it out to draw one), got {seed!r}",
            reason=ReasonCode.INVALID_PARAMETER,
        )


def check_request(params: EditParams, image_count: int) -> None:
    """Everything that can be refused before any image is decoded or any model loaded.

    The ways in call this first (REST and MCP through ``Submissions``, RunPod, the CLI), so a
    bad request is refused with the reason ``Editor.edit`` (``prepare_edit``) and the schema give.
    """
    check_image_count(image_count)
    if params.width is not None or params.height is not None:
        output_size([], ModelSizing(), params.width, params.height)
    check_params(params)


def check_batch(params: EditParams, images: int, references: int) -> None:
    """A batch: 1 to ``MAX_BATCH_SIZE`` images, each request (one image and the references) under
    the rules of one edit. The schema holds the same (``edit_batches``' checks, then each request's)."""
    if images < 1:
        raise InvalidInput("a batch needs at least one image", reason=ReasonCode.INVALID_INPUT)
    if images > MAX_BATCH_SIZE:
        raise InvalidInput(
            f"{images} images in a batch; at most {MAX_BATCH_SIZE} are allowed",
            reason=ReasonCode.TOO_MANY_IMAGES,
        )
    check_request(params, 1 + references)


def check_image_count(count: int) -> None:
    if count > MAX_IMAGES:
        raise InvalidInput(
            f"{count} images; at most {MAX_IMAGES} are supported", reason=ReasonCode.TOO_MANY_IMAGES
        )


_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,30}")


def params_from_mapping(values: Mapping[str, Any], *, form: bool = False) -> EditParams:
    """The one mapping from a request's fields to ``EditParams``: REST JSON and multipart, MCP
    tool arguments, RunPod job input and the CLI's options all come through here.

    Field names are ``EditParams``' own; absent fields take its defaults, other keys are ignored.
    Types are checked, not guessed: a number must be a number (``form=True``: the text of one, as
    multipart fields are always text), a whole float counts as an integer, booleans are not
    numbers. ``seed``, ``width`` and ``height`` may be null. Ranges are ``check_request``'s job.
    """
    fields: dict[str, Any] = {}
    for name, convert, reason in _FIELDS:
        if name not in values:
            continue
        value = values[name]
        if value is None and name in _NULLABLE:
            fields[name] = None
            continue
        converted = convert(value, form)
        if converted is None:
            raise InvalidInput(f"{name} has the wrong type: {value!r:.80}", reason=reason)
        fields[name] = converted
    if "prompt" not in fields:
        raise InvalidInput("prompt is required", reason=ReasonCode.INVALID_PROMPT)
    return EditParams(**fields)


def webhook_endpoint_from_mapping(values: Mapping[str, Any]) -> uuid.UUID | None:
    """``webhook_endpoint_id`` of a request's fields (REST JSON and multipart, MCP): one of the user's
    completion-webhook endpoints, or None. Whose it is, the schema checks at insert."""
    value = values.get("webhook_endpoint_id")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidInput(
        f"webhook_endpoint_id must be a UUID, got {value!r:.80}", reason=ReasonCode.INVALID_PARAMETER
    )


def _as_text(value: object, _form: bool) -> str | None:
    return value if isinstance(value, str) else None


def _as_int(value: object, form: bool) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if form and isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return int(value)
    return None


def _as_float(value: object, form: bool) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif form and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _as_speed(value: object, _form: bool) -> object:
    return check_speed(value)


def _as_loras(value: object, form: bool) -> object:
    # Multipart sends the list as JSON text; everywhere else it is a list already.
    if form and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return parse_loras(value)


_NULLABLE = frozenset({"seed", "width", "height", "speed"})
_FIELDS: tuple[tuple[str, Callable[[object, bool], object], ReasonCode], ...] = (
    ("prompt", _as_text, ReasonCode.INVALID_PROMPT),
    ("negative_prompt", _as_text, ReasonCode.INVALID_PROMPT),
    ("num_inference_steps", _as_int, ReasonCode.INVALID_PARAMETER),
    ("true_cfg_scale", _as_float, ReasonCode.INVALID_PARAMETER),
    ("guidance_scale", _as_float, ReasonCode.INVALID_PARAMETER),
    ("seed", _as_int, ReasonCode.INVALID_PARAMETER),
    ("width", _as_int, ReasonCode.INVALID_SIZE),
    ("height", _as_int, ReasonCode.INVALID_SIZE),
    ("base", _as_text, ReasonCode.INVALID_PARAMETER),
    ("base_color", _as_text, ReasonCode.INVALID_PARAMETER),
    ("speed", _as_speed, ReasonCode.INVALID_PARAMETER),
    ("loras", _as_loras, ReasonCode.INVALID_PARAMETER),
)


def encoded_images(values: Mapping[str, Any]) -> list[bytes]:
    """The images a request carries as base64: ``image`` (one) and ``images`` (a list), decoded.

    Refuses more than ``MAX_IMAGES`` in all before decoding any (``too_many_images``).
    """
    items: list[object] = []
    if values.get("image") is not None:
        items.append(values["image"])
    listed = values.get("images")
    if listed is not None:
        if not isinstance(listed, list):
            raise InvalidInput("images must be a list of base64 images", reason=ReasonCode.INVALID_PARAMETER)
        items.extend(listed)
    check_image_count(len(items))
    return [decode_base64_image(item) for item in items]


def decoded_images(items: Sequence[object] | None) -> list[bytes]:
    """Base64 images given as a list (a batch's images or its references), decoded; their count is
    the batch's rule (``check_batch``), checked before."""
    return [decode_base64_image(item) for item in items or ()]


def check_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    """At most ``MAX_IMAGES``, each as RGB."""
    check_image_count(len(images))
    return [to_rgb(image) for image in images]


def draw_seed(params: EditParams) -> int:
    """The request's seed, or a fresh one (below 2**31, so every engine and client can hold it)."""
    return params.seed if params.seed is not None else secrets.randbelow(DRAWN_SEED_BOUND)


@dataclass(frozen=True, slots=True)
class PreparedEdit:
    """Validated inputs for one edit: the images to condition on (a base canvas when the
    request had none), the output size, the seed, and which canvas was built."""

    images: list[Image.Image]
    width: int
    height: int
    seed: int
    base: Base | None


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
        # What ran: a Lightning preset turns CFG off whatever the request said.
        "true_cfg_scale": str(result.run.get("true_cfg_scale", params.true_cfg_scale)),
        "guidance_scale": str(params.guidance_scale),
        "width": str(result.width),
        "height": str(result.height),
        "model": str(result.model.get("model_id", "")),
        "model_revision": str(result.model.get("revision") or ""),
        **({"speed": str(result.run["speed"])} if "speed" in result.run else {}),
        **({"loras": json.dumps(result.run["loras"])} if result.run.get("loras") else {}),
    }
