"""JSON Schemas of the request's fields, from their declaration (``domain.request``).

The REST API's OpenAPI document (JSON and multipart bodies) and the MCP tools' input schemas are
built from these, and ``params.params_from_mapping`` and ``params.check_params`` read and check
the same declaration: what is documented is what is validated, with the declared reason codes.
Rules across fields (the output area, a LoRA named twice) are in the descriptions, and checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from processor.domain import rules
from processor.domain.request import OPTION_FIELDS, PARAM_FIELDS, DeclaredField

Schema = dict[str, Any]

_LORA: Schema = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": rules.LORA_NAME_PATTERN},
        "scale": {
            "anyOf": [
                {"type": "number", "minimum": rules.MIN_LORA_SCALE, "maximum": rules.MAX_LORA_SCALE},
                {"type": "null"},
            ]
        },
    },
}


def field_schema(item: DeclaredField, *, form: bool = False, documented: bool = True) -> Schema:
    """One field's schema. ``form``: as a multipart field (text; a list is JSON text; no null).
    ``documented``: with its description and default (leave them to a generator that adds its own)."""
    spec = item.spec
    schema: Schema
    if spec.kind == "loras":
        schema = {
            "type": "array",
            "items": {"anyOf": [_LORA, {"type": "string", "pattern": rules.LORA_NAME_PATTERN}]},
        }
        if spec.max_length is not None:
            schema["maxItems"] = spec.max_length
        if form:
            schema = {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}
    elif spec.kind == "choice":
        schema = {"type": "string", "enum": list(spec.choices)}
    elif spec.kind == "uuid":
        # An empty text is none (a form's empty field).
        schema = {"anyOf": [{"type": "string", "format": "uuid"}, {"type": "string", "maxLength": 0}]}
    else:
        schema = {"type": {"text": "string", "integer": "integer", "number": "number"}[spec.kind]}
        bounds = {
            "minimum": spec.minimum,
            "maximum": spec.maximum,
            "multipleOf": spec.multiple_of,
            "maxLength": spec.max_length,
            "pattern": spec.pattern,
        }
        schema.update({key: value for key, value in bounds.items() if value is not None})
    if spec.nullable and not form:
        schema = {"anyOf": [schema, {"type": "null"}]}
    if documented:
        schema["description"] = spec.description + (" As JSON text." if form and spec.kind == "loras" else "")
        if not item.required:
            schema["default"] = _json(item.default)
    return schema


def _json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json(item) for item in value]
    return value


def properties(declared: Iterable[DeclaredField], *, form: bool = False) -> dict[str, Schema]:
    return {item.name: field_schema(item, form=form) for item in declared}


def params_properties(*, form: bool = False) -> dict[str, Schema]:
    """The properties of every ``EditParams`` field."""
    return properties(PARAM_FIELDS, form=form)


def options_properties(*, form: bool = False) -> dict[str, Schema]:
    """The properties of every ``RequestOptions`` field."""
    return properties(OPTION_FIELDS, form=form)


def object_schema(props: Mapping[str, Schema], *, description: str | None = None) -> Schema:
    """An object of ``props``, the declared required fields required. Other keys are ignored by the
    mapping, so they are allowed."""
    required = [item.name for item in (*PARAM_FIELDS, *OPTION_FIELDS) if item.required and item.name in props]
    schema: Schema = {"type": "object", "required": required, "properties": dict(props)}
    if description:
        schema["description"] = description
    return schema
