"""An edit request's fields, declared once: what every way in reads and every editor receives.

``EditParams`` holds the generation parameters (given whole to ``Editor.edit``) and
``RequestOptions`` what a request asks of the service besides the edit (stored on the row, never
given to the editor). Each field carries a ``FieldSpec``: its kind, bounds, nullability, the reason
code of a refusal, a description and an example. Everything else is derived from that declaration:

* ``params.params_from_mapping`` and ``params.options_from_mapping``, the one mapping every way in
  uses (REST JSON and multipart, MCP arguments, RunPod input, the CLI's options, a claimed row);
* ``params.check_params``' bounds (cross-field rules such as the output area stay in ``params``);
* the JSON schemas of POST /v1/edits and /v1/batches and of the MCP tools (``request_schema``);
* the CLI's options and the Postgres adapters' column list (columns are named as the fields).

Adding a field: declare it here, add the column (a migration), and ``tests/test_every_field.py``
fails until every way in and every queue adapter carries it to ``Editor.edit`` unchanged.
"""

from __future__ import annotations

import dataclasses
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from processor.domain import rules
from processor.domain.reasons import ReasonCode
from processor.domain.rules import Base, OutputFormat, SpeedPreset
from processor.domain.speed import LoraChoice

FieldKind = Literal["text", "integer", "number", "choice", "loras", "uuid"]
"""How a field's value is read: ``text``; ``integer`` (a whole float counts, a boolean does not);
``number`` (finite); ``choice`` (one of ``choices``); ``loras`` (a list of ``{name, scale}`` or
names); ``uuid`` (text of one)."""

_SPEC: Final = "request_field"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What one request field is: read, bounded, documented and exemplified the same everywhere."""

    kind: FieldKind
    reason: ReasonCode
    """The reason code of a refusal of this field (wrong type or out of bounds)."""
    description: str
    example: Any
    """A valid value other than the default: the every-field round trip sends it through every way in."""
    nullable: bool = False
    """Null is taken as absent (the default applies) rather than as a wrong type."""
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    max_length: int | None = None
    """Characters of a text, items of a list."""
    max_bytes: int | None = None
    """UTF-8 bytes of a text's NFC form (``text_bytes``)."""
    pattern: str | None = None
    """A regular expression (ECMA-262, as JSON Schema's) the text must match; anchor it to match the whole."""
    shape: str | None = None
    """What ``pattern`` asks, in words, for refusals."""
    choices: tuple[str, ...] = ()
    cli: str | None = None
    """The CLI option, when it is not ``--`` and the name with dashes."""


def text_bytes(text: str) -> int:
    """UTF-8 bytes of ``text``'s NFC form: what the tokenizer sees (it normalizes to NFC), at least
    one byte per token it makes. SQL: ``octet_length(normalize(text, NFC))``."""
    if text.isascii():  # NFC already, one byte a character
        return len(text)
    return len(unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass"))


def declare(**spec: Any) -> dict[str, FieldSpec]:
    """A dataclass field's metadata declaring it a request field: ``field(default=..., metadata=declare(...))``."""
    return {_SPEC: FieldSpec(**spec)}


@dataclass(frozen=True, slots=True)
class DeclaredField:
    """One declared field: its name (also the row's column), spec and default."""

    name: str
    spec: FieldSpec
    default: Any
    """``REQUIRED`` when the field has none."""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


REQUIRED: Final[Any] = dataclasses.MISSING


def declared_fields(cls: type[Any]) -> tuple[DeclaredField, ...]:
    """The declared fields of ``EditParams`` or ``RequestOptions``, in declaration order."""
    return tuple(
        DeclaredField(item.name, item.metadata[_SPEC], item.default) for item in dataclasses.fields(cls)
    )


_ESCAPED = {" ": " ", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f", "\v": "\\v"}
_NOT_BLANK = "[^\\x00" + "".join(_ESCAPED[char] for char in rules.PROMPT_WHITESPACE) + "]"
PROMPT_PATTERN: Final = f"^[^\\x00]*{_NOT_BLANK}[^\\x00]*$"
"""A prompt: some character that is not blank (``PROMPT_WHITESPACE``), and no NUL (Postgres text
cannot hold one)."""
TEXT_PATTERN: Final = "^[^\\x00]*$"
"""Any other text: no NUL."""


@dataclass(frozen=True, slots=True)
class EditParams:
    """Generation parameters, with the model card's defaults: what ``Editor.edit`` receives; and how
    its result is encoded (``output_format``, ``output_quality``: editors ignore them, the one encoder,
    ``core.direct_edit.encode_output``, reads them), so they travel wherever the request does."""

    prompt: str = field(
        metadata=declare(
            kind="text",
            reason=ReasonCode.INVALID_PROMPT,
            max_length=rules.MAX_PROMPT_CHARS,
            max_bytes=rules.MAX_PROMPT_BYTES,
            pattern=PROMPT_PATTERN,
            shape="a text with a character that is not blank",
            description="What to change (or, without images, what to create).",
            example="paint the sky orange",
        ),
    )
    negative_prompt: str = field(
        default=rules.DEFAULT_NEGATIVE_PROMPT,
        metadata=declare(
            kind="text",
            reason=ReasonCode.INVALID_PROMPT,
            max_length=rules.MAX_PROMPT_CHARS,
            max_bytes=rules.MAX_PROMPT_BYTES,
            pattern=TEXT_PATTERN,
            description="What to avoid (used when true_cfg_scale > 1).",
            example="blurry, low quality",
        ),
    )
    num_inference_steps: int = field(
        default=rules.DEFAULT_STEPS,
        metadata=declare(
            kind="integer",
            reason=ReasonCode.INVALID_PARAMETER,
            minimum=rules.MIN_STEPS,
            maximum=rules.MAX_STEPS,
            cli="--steps",
            description="Denoising steps (a speed preset other than quality sets its own).",
            example=7,
        ),
    )
    true_cfg_scale: float = field(
        default=rules.DEFAULT_TRUE_CFG_SCALE,
        metadata=declare(
            kind="number",
            reason=ReasonCode.INVALID_PARAMETER,
            minimum=0,
            maximum=rules.MAX_CFG_SCALE,
            description="Classifier-free guidance scale; 1 turns it off.",
            example=2.5,
        ),
    )
    guidance_scale: float = field(
        default=rules.DEFAULT_GUIDANCE_SCALE,
        metadata=declare(
            kind="number",
            reason=ReasonCode.INVALID_PARAMETER,
            minimum=0,
            maximum=rules.MAX_CFG_SCALE,
            description="The transformer's guidance embedding (Qwen-Image-Edit ignores values but 1).",
            example=1.5,
        ),
    )
    seed: int | None = field(
        default=None,
        metadata=declare(
            kind="integer",
            reason=ReasonCode.INVALID_PARAMETER,
            nullable=True,
            minimum=0,
            maximum=rules.MAX_SEED,
            description="Random seed; leave it out (or null) to draw one, reported with the result.",
            example=123456789,
        ),
    )
    width: int | None = field(
        default=None,
        metadata=declare(
            kind="integer",
            reason=ReasonCode.INVALID_SIZE,
            nullable=True,
            minimum=rules.MIN_OUTPUT_SIDE,
            maximum=rules.MAX_OUTPUT_SIDE,
            multiple_of=rules.SIZE_MULTIPLE,
            description="Output width; give it with height (at most MAX_OUTPUT_PIXELS in all).",
            example=256,
        ),
    )
    height: int | None = field(
        default=None,
        metadata=declare(
            kind="integer",
            reason=ReasonCode.INVALID_SIZE,
            nullable=True,
            minimum=rules.MIN_OUTPUT_SIDE,
            maximum=rules.MAX_OUTPUT_SIDE,
            multiple_of=rules.SIZE_MULTIPLE,
            description="Output height; give it with width.",
            example=192,
        ),
    )
    base: Base = field(
        default=rules.DEFAULT_BASE,
        metadata=declare(
            kind="choice",
            reason=ReasonCode.INVALID_PARAMETER,
            choices=rules.BASES,
            description="Without images: start from a blank canvas or seeded noise.",
            example="noise",
        ),
    )
    base_color: str = field(
        default=rules.DEFAULT_BASE_COLOR,
        metadata=declare(
            kind="text",
            reason=ReasonCode.INVALID_PARAMETER,
            pattern=rules.HEX_COLOUR_PATTERN,
            shape="#rrggbb",
            description="Colour of a blank canvas, #rrggbb.",
            example="#336699",
        ),
    )
    speed: SpeedPreset | None = field(
        default=None,
        metadata=declare(
            kind="choice",
            reason=ReasonCode.INVALID_PARAMETER,
            nullable=True,
            choices=rules.SPEED_PRESETS,
            description="quality (40 steps, CFG), fast (Lightning 8) or fastest (Lightning 4); "
            "default: the deployment's SPEED.",
            example="fast",
        ),
    )
    loras: tuple[LoraChoice, ...] = field(
        default=(),
        metadata=declare(
            kind="loras",
            reason=ReasonCode.INVALID_PARAMETER,
            nullable=True,
            max_length=rules.MAX_REQUEST_LORAS,
            cli="--lora",
            description="Allowlisted LoRAs for this edit only, each {name, scale} (scale null: the "
            "operator's default).",
            example=(LoraChoice("detail", 0.5),),
        ),
    )
    output_format: OutputFormat | None = field(
        default=None,
        metadata=declare(
            kind="choice",
            reason=ReasonCode.INVALID_PARAMETER,
            nullable=True,
            choices=rules.OUTPUT_FORMATS,
            description="The result's encoding: png (lossless), webp or jpeg (at output_quality); "
            "default: the deployment's OUTPUT_FORMAT. The output object is {id}.png, .webp or .jpg.",
            example="webp",
        ),
    )
    output_quality: int | None = field(
        default=None,
        metadata=declare(
            kind="integer",
            reason=ReasonCode.INVALID_PARAMETER,
            nullable=True,
            minimum=rules.MIN_OUTPUT_QUALITY,
            maximum=rules.MAX_OUTPUT_QUALITY,
            description="WebP and JPEG quality, 1 to 100 (PNG is lossless and ignores it); "
            "default: the deployment's OUTPUT_QUALITY.",
            example=77,
        ),
    )


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What a request asks of the service besides the edit: stored on the row, never given to the editor."""

    webhook_endpoint_id: uuid.UUID | None = field(
        default=None,
        metadata=declare(
            kind="uuid",
            reason=ReasonCode.INVALID_PARAMETER,
            nullable=True,
            description="One of your completion-webhook endpoints, told when the edit is final.",
            example=uuid.UUID("00000000-0000-4000-8000-00000000cafe"),
        ),
    )
    idempotency_key: str | None = field(
        default=None,
        metadata=declare(
            kind="text",
            reason=ReasonCode.INVALID_PARAMETER,
            nullable=True,
            max_length=rules.IDEMPOTENCY_KEY_MAX_CHARS,
            pattern=rules.IDEMPOTENCY_KEY_PATTERN,
            shape="visible ASCII characters (a UUID, say)",
            description="Makes retries safe: a request with a key you used before is not made again; "
            "you get the first one back (the same key with another body is refused: "
            "idempotency_key_reused). Unique per user for as long as the request exists.",
            example="3f0c2a9e-order-1234",
        ),
    )


NO_OPTIONS: Final = RequestOptions()
"""A request that asks nothing besides the edit."""
PARAM_FIELDS: Final = declared_fields(EditParams)
OPTION_FIELDS: Final = declared_fields(RequestOptions)


def example_params() -> EditParams:
    """Every parameter at its declared example (none at its default): the request the every-field
    round trip sends through each way in."""
    return EditParams(**{item.name: item.spec.example for item in PARAM_FIELDS})


def example_options() -> RequestOptions:
    """Every option at its declared example."""
    return RequestOptions(**{item.name: item.spec.example for item in OPTION_FIELDS})
