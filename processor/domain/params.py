"""What every editor accepts: the request's fields read and checked from their declaration
(``domain.request``), and the limits on images, checked before any model runs.

Shared by the diffusers engine and the ComfyUI engine (and the ways in's early checks), so a
request is refused with the same reason code whichever way it came and whichever engine would
have run it.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from processor.domain.errors import InvalidInput
from processor.domain.images import base_canvas, decode_base64_image, to_rgb
from processor.domain.ports.editor import EditResult
from processor.domain.reasons import ReasonCode
from processor.domain.request import (
    OPTION_FIELDS,
    PARAM_FIELDS,
    DeclaredField,
    EditParams,
    FieldKind,
    RequestOptions,
    text_bytes,
)
from processor.domain.rules import DRAWN_SEED_BOUND, MAX_BATCH_SIZE, MAX_IMAGES, Base
from processor.domain.sizing import ModelSizing, output_size
from processor.domain.speed import check_loras, parse_loras


def check_params(params: EditParams) -> None:
    """Raise ``InvalidInput`` with the field's reason code for a parameter of the wrong type or out of
    its declared bounds (``domain.request``); the output size's rules across fields are ``check_request``'s."""
    for item in PARAM_FIELDS:
        check_field(item, getattr(params, item.name))


def check_request(params: EditParams, image_count: int) -> None:
    """Everything that can be refused before any image is decoded or any model loaded.

    The ways in call this first (REST and MCP through ``UserActions``, RunPod, the CLI), so a
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


# --- Reading fields ---------------------------------------------------------------------------------


def params_from_mapping(values: Mapping[str, Any], *, form: bool = False) -> EditParams:
    """The one mapping from a request's fields to ``EditParams``: REST JSON and multipart, MCP
    tool arguments, RunPod job input, the CLI's options and a claimed row all come through here.

    Field names are the declaration's (``domain.request``); absent fields take its defaults, other
    keys are ignored. Types are checked, not guessed: a number must be a number (``form=True``: the
    text of one, as multipart fields are always text), a whole float counts as an integer, booleans
    are not numbers; a choice must be one of its choices. Null is absent where the field is nullable.
    Bounds are ``check_request``'s job.
    """
    fields = _read(PARAM_FIELDS, values, form)
    if "prompt" not in fields:
        raise InvalidInput("prompt is required", reason=ReasonCode.INVALID_PROMPT)
    return EditParams(**fields)


def options_from_mapping(values: Mapping[str, Any], *, form: bool = False) -> RequestOptions:
    """A request's ``RequestOptions`` (``webhook_endpoint_id``...), read as ``params_from_mapping``
    reads the parameters; whose endpoint it is, the schema checks at insert."""
    options = RequestOptions(**_read(OPTION_FIELDS, values, form))
    for item in OPTION_FIELDS:
        check_field(item, getattr(options, item.name))
    return options


def _read(declared: Sequence[DeclaredField], values: Mapping[str, Any], form: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for item in declared:
        if item.name not in values:
            continue
        value = values[item.name]
        # Null is absent where the field is nullable (and so is an empty UUID: a form's empty field).
        if item.spec.nullable and (value is None or (value == "" and item.spec.kind == "uuid")):
            continue
        converted = _READERS[item.spec.kind](item, value, form)
        if converted is None:
            raise _refuse(item, _KIND_WORDS[item.spec.kind], value)
        fields[item.name] = converted
    return fields


_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,30}")


def _as_text(_item: DeclaredField, value: object, _form: bool) -> str | None:
    return value if isinstance(value, str) else None


def _as_int(_item: DeclaredField, value: object, form: bool) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if form and isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return int(value)
    return None


def _as_float(_item: DeclaredField, value: object, form: bool) -> float | None:
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


def _as_choice(item: DeclaredField, value: object, _form: bool) -> str | None:
    _check_choice(item, value)
    return value if isinstance(value, str) else None


def _as_loras(_item: DeclaredField, value: object, form: bool) -> object:
    # Multipart sends the list as JSON text; everywhere else it is a list already.
    if form and isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, an over-long integer, too deep
            return None
    return parse_loras(value)


def _as_uuid(_item: DeclaredField, value: object, _form: bool) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None


_KIND_WORDS: Mapping[FieldKind, str] = {
    "text": "a string",
    "integer": "an integer",
    "number": "a finite number",
    "choice": "a string",
    "loras": "a list of {name, scale}",
    "uuid": "a UUID",
}
_READERS: Mapping[FieldKind, Callable[[DeclaredField, object, bool], object]] = {
    "text": _as_text,
    "integer": _as_int,
    "number": _as_float,
    "choice": _as_choice,
    "loras": _as_loras,
    "uuid": _as_uuid,
}


# --- Checking fields -------------------------------------------------------------------------------


def check_field(item: DeclaredField, value: object) -> None:
    """``InvalidInput`` (the field's reason) when ``value`` is not of the field's kind or out of its bounds."""
    spec = item.spec
    if value is None and spec.nullable and item.default is None:
        return
    _CHECKS[spec.kind](item, value)


def _refuse(item: DeclaredField, should: str, value: object) -> InvalidInput:
    return InvalidInput(f"{item.name} must be {should}, got {value!r:.80}", reason=item.spec.reason)


def _range(item: DeclaredField) -> str:
    spec = item.spec
    text = f"from {_number(spec.minimum)} to {_number(spec.maximum)}"
    return text + (f", a multiple of {spec.multiple_of}" if spec.multiple_of else "")


def _number(bound: float | None) -> str:
    return "2**63-1" if bound == 2**63 - 1 else f"{bound:g}" if isinstance(bound, float) else str(bound)


def _within(item: DeclaredField, number: float) -> bool:
    spec = item.spec
    return (
        (spec.minimum is None or number >= spec.minimum)
        and (spec.maximum is None or number <= spec.maximum)
        and (spec.multiple_of is None or number % spec.multiple_of == 0)
    )


def _check_text(item: DeclaredField, value: object) -> None:
    spec = item.spec
    if not isinstance(value, str):
        raise _refuse(item, "a string", value)
    if spec.max_length is not None and len(value) > spec.max_length:
        raise InvalidInput(
            f"{item.name} has {len(value)} characters; the limit is {spec.max_length}", reason=spec.reason
        )
    if "\x00" in value:
        # Postgres text cannot hold NUL: refused here so no way in gets further than the row.
        raise InvalidInput(f"{item.name} may not contain NUL characters", reason=spec.reason)
    if not value.isascii() and _SURROGATE.search(value):
        # A lone surrogate (JSON's "\ud800") is no character: UTF-8, Postgres and tokenizers refuse it.
        raise InvalidInput(f"{item.name} holds a lone surrogate (not Unicode text)", reason=spec.reason)
    if spec.max_bytes is not None and text_bytes(value) > spec.max_bytes:
        # Tokens, not characters, are the work: at most one per byte of the NFC form (rules).
        raise InvalidInput(
            f"{item.name} is {text_bytes(value)} bytes in UTF-8 (NFC form); the limit is {spec.max_bytes}",
            reason=spec.reason,
        )
    if spec.pattern is not None and not re.search(python_regex(spec.pattern), value):
        raise _refuse(item, spec.shape or f"a text matching {spec.pattern}", value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def python_regex(pattern: str) -> str:
    """A declared pattern (ECMA-262, as JSON Schema's and SQL's ``~``, where ``$`` ends the text) for
    Python's ``re``, whose ``$`` also matches before a final newline."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern


def _check_integer(item: DeclaredField, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not _within(item, value):
        raise _refuse(item, f"an integer {_range(item)}", value)


def _check_number(item: DeclaredField, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not _within(item, value)
    ):
        raise _refuse(item, f"a number {_range(item)}", value)
    if value != 0 and struct.unpack("f", struct.pack("f", value))[0] == 0:
        # Numbers are stored as 4-byte floats (SQL real, what every engine runs in): one that would
        # become 0 there (1e-300) is refused by every way in, not by the database alone.
        raise _refuse(
            item, f"a number {_range(item)} that a 4-byte float holds (0, or at least 1e-45)", value
        )


def _check_choice(item: DeclaredField, value: object) -> None:
    if value not in item.spec.choices:
        raise _refuse(item, f"one of {', '.join(item.spec.choices)}", value)


def _check_loras(item: DeclaredField, value: object) -> None:
    if not isinstance(value, tuple):
        raise _refuse(item, "a list of {name, scale}", value)
    check_loras(value)


def _check_uuid(item: DeclaredField, value: object) -> None:
    if not isinstance(value, uuid.UUID):
        raise _refuse(item, "a UUID", value)


_CHECKS: Mapping[FieldKind, Callable[[DeclaredField, object], None]] = {
    "text": _check_text,
    "integer": _check_integer,
    "number": _check_number,
    "choice": _check_choice,
    "loras": _check_loras,
    "uuid": _check_uuid,
}


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
