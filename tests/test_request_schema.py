"""The documented body is the validated body: the JSON Schema published for a request's fields (in
the OpenAPI document and the MCP tools) and the one mapping and checks every way in uses give the
same verdict on each field's boundary values. Both come from one declaration (``domain/request.py``),
so the cases are derived from it too: a new field, or a new bound, is tested without a line here."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from jsonschema.exceptions import ValidationError

from processor.domain.errors import InvalidInput
from processor.domain.params import check_field, options_from_mapping, params_from_mapping, python_regex
from processor.domain.request import OPTION_FIELDS, PARAM_FIELDS, DeclaredField
from processor.domain.request_schema import field_schema, object_schema, options_properties, params_properties
from processor.domain.speed import LoraChoice

SCHEMA = object_schema({**params_properties(), **options_properties()})


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    # JSON Schema's patterns are ECMA-262: ``$`` ends the text (Python's also matches before a final
    # newline, which jsonschema's own ``pattern`` inherits). SQL's ``~`` agrees with ECMA.
    if isinstance(instance, str) and not re.search(python_regex(pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


def boundary_values(item: DeclaredField) -> Iterator[Any]:
    """Values on and beyond each of the field's declared bounds, of its type and of others."""
    spec = item.spec
    yield spec.example
    yield None
    yield True
    yield [spec.example]
    if spec.kind in ("integer", "number"):
        step = spec.multiple_of or (1 if spec.kind == "integer" else 0.5)
        for bound in (spec.minimum, spec.maximum):
            if bound is not None:
                yield from (bound - step, bound, bound + step)
        if spec.multiple_of:
            yield spec.example + 1
        yield "7"
        yield 7.0
        yield 7.5
    if spec.kind == "text":
        yield 7
        if spec.max_length is not None:
            yield "x" * spec.max_length
            yield "x" * (spec.max_length + 1)
        yield from ("", " \t\n", "\x00", "a\x00b", "#abcdef", "#abcdef\n", "#ABCDEF", "#abcdeg")
    if spec.kind == "choice":
        yield from (*spec.choices, "nope", spec.choices[0].upper())
    if spec.kind == "loras":
        yield []
        yield ["a", "b", "c"]
        yield ["a", "b", "c", "d"]
        yield [{"name": "a", "scale": 4}, {"name": "b", "scale": -4.0}]
        yield from ([{"name": "a", "scale": 4.5}], [{"name": "A"}], [{"name": "a", "x": 1}], [{"scale": 1}])
        yield "a"
    if spec.kind == "uuid":
        yield from ("00000000-0000-4000-8000-000000000001", "not-a-uuid", "", 5)


def cases() -> Iterator[tuple[str, Any]]:
    for item in (*PARAM_FIELDS, *OPTION_FIELDS):
        for value in boundary_values(item):
            yield item.name, as_json(value)


def as_json(value: Any) -> Any:
    """A declared example as a client sends it (LoRAs as objects, a UUID as text)."""
    if isinstance(value, tuple | list):
        return [as_json(item) for item in value]
    if isinstance(value, LoraChoice):
        return value.as_json()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def documented(body: dict[str, Any]) -> bool:
    return Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).is_valid(body)


def validated(body: dict[str, Any]) -> bool:
    try:
        params = params_from_mapping(body)
        options = options_from_mapping(body)
        for item in PARAM_FIELDS:
            check_field(item, getattr(params, item.name))
        for item in OPTION_FIELDS:
            check_field(item, getattr(options, item.name))
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize(("name", "value"), list(cases()), ids=lambda v: repr(v)[:40])
def test_the_schema_and_the_checks_agree_on_each_boundary(name: str, value: Any) -> None:
    body = {"prompt": "make it blue", name: value}
    assert documented(body) == validated(body), body


def test_a_refusal_carries_the_fields_reason() -> None:
    for item in PARAM_FIELDS:
        with pytest.raises(InvalidInput) as refused:
            params_from_mapping({"prompt": "x", item.name: [object()]})
        assert refused.value.reason == item.spec.reason, item.name


def test_every_declared_field_is_documented_with_its_default() -> None:
    for item in (*PARAM_FIELDS, *OPTION_FIELDS):
        schema = field_schema(item)
        assert schema["description"] == item.spec.description
        assert item.required or "default" in schema
    assert SCHEMA["required"] == ["prompt"]
