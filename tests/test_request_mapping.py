"""The one mapping from request fields to ``EditParams`` and the one base64 decoder (no database, no model)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from processor.domain.errors import InvalidInput
from processor.domain.images import decode_base64_image
from processor.domain.params import check_request, encoded_images, params_from_mapping
from processor.domain.reasons import ReasonCode
from processor.domain.request import OPTION_FIELDS, PARAM_FIELDS, EditParams, example_params

PNG = b"\x89PNG\r\n\x1a\n-not-really"
TEXT = base64.b64encode(PNG).decode()


def refusal(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidInput) as refused:
        call(*args, **kwargs)
    return str(refused.value.reason)


def test_absent_fields_take_the_defaults_and_unknown_keys_are_ignored() -> None:
    assert params_from_mapping({"prompt": "x", "edit_request_id": "ignored"}) == EditParams(prompt="x")


def test_numbers_must_be_numbers() -> None:
    assert params_from_mapping({"prompt": "x", "num_inference_steps": 8.0}).num_inference_steps == 8
    for value in (True, "8", 8.5, [8]):
        assert (
            refusal(params_from_mapping, {"prompt": "x", "num_inference_steps": value}) == "invalid_parameter"
        )
    assert (
        refusal(params_from_mapping, {"prompt": "x", "true_cfg_scale": float("nan")}) == "invalid_parameter"
    )
    assert refusal(params_from_mapping, {"prompt": "x", "width": "64"}) == "invalid_size"
    assert refusal(params_from_mapping, {"prompt": 5}) == "invalid_prompt"
    assert refusal(params_from_mapping, {"negative_prompt": "x"}) == "invalid_prompt"  # no prompt at all


def test_form_fields_are_the_text_of_numbers() -> None:
    form = {"prompt": "x", "num_inference_steps": "8", "true_cfg_scale": "2.5", "seed": "-1", "width": "64"}
    params = params_from_mapping(form, form=True)
    assert (params.num_inference_steps, params.true_cfg_scale, params.seed, params.width) == (8, 2.5, -1, 64)
    assert refusal(params_from_mapping, {"prompt": "x", "seed": "seven"}, form=True) == "invalid_parameter"


def test_null_is_absent_only_where_the_schema_says_so() -> None:
    assert params_from_mapping({"prompt": "x", "seed": None, "width": None}).seed is None
    assert refusal(params_from_mapping, {"prompt": "x", "negative_prompt": None}) == "invalid_prompt"
    assert refusal(params_from_mapping, {"prompt": "x", "base": None}) == "invalid_parameter"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TEXT, PNG),
        (f"data:image/png;base64,{TEXT}", PNG),
        (f"data:image/svg+xml;base64,{TEXT}", PNG),
        (f"data:text/plain;base64,{TEXT}", ReasonCode.INVALID_BASE64),
        (f"data:image/png,{TEXT}", ReasonCode.INVALID_BASE64),  # not base64-encoded
        (f"data:image/png;charset=x;base64,{TEXT}", ReasonCode.INVALID_BASE64),
        (f"junk,{TEXT}", ReasonCode.INVALID_BASE64),  # nothing is cut at a comma
        (TEXT[:-2], ReasonCode.INVALID_BASE64),  # bad padding
        (f"{TEXT[:8]}\n{TEXT[8:]}", ReasonCode.INVALID_BASE64),
        ("é" + TEXT, ReasonCode.INVALID_BASE64),
        (None, ReasonCode.INVALID_BASE64),
        (12, ReasonCode.INVALID_BASE64),
    ],
)
def test_one_base64_decoder(text: Any, expected: bytes | ReasonCode) -> None:
    if isinstance(expected, bytes):
        assert decode_base64_image(text) == expected
    else:
        assert refusal(decode_base64_image, text) == expected


def test_image_and_images_count_together() -> None:
    assert encoded_images({"image": TEXT, "images": [TEXT, TEXT]}) == [PNG] * 3
    assert refusal(encoded_images, {"image": TEXT, "images": [TEXT] * 3}) == "too_many_images"
    assert refusal(encoded_images, {"images": TEXT}) == "invalid_parameter"
    assert encoded_images({"images": []}) == []


def test_every_declared_field_has_an_example_that_is_valid_and_not_its_default() -> None:
    # The every-field round trip sends the examples: each must differ from the default (or a way in
    # that drops the field would go unnoticed) and pass the rules.
    for item in (*PARAM_FIELDS, *OPTION_FIELDS):
        assert item.required or item.spec.example != item.default, item.name
    check_request(example_params(), 1)
    assert (
        params_from_mapping({item.name: getattr(example_params(), item.name) for item in PARAM_FIELDS})
        == example_params()
    )


def test_a_choice_must_be_one_of_its_choices() -> None:
    assert refusal(params_from_mapping, {"prompt": "x", "speed": "ludicrous"}) == "invalid_parameter"
    assert refusal(params_from_mapping, {"prompt": "x", "base": "plasma"}) == "invalid_parameter"
    assert params_from_mapping({"prompt": "x", "speed": None}).speed is None
