"""Speed presets and per-request LoRAs: the choices a request makes about *how* the model runs.

SQL mirrors them (``speed`` check, ``loras`` jsonb check, the ``edit_loras`` allowlist) in
``supabase/migrations/20261201000400_speed_and_loras.sql``.

* ``quality`` (the default): the model card's path, 40 steps with true CFG.
* ``fast``: the Lightning 8-step LoRA of the loaded model, CFG off, the Lightning scheduler.
* ``fastest``: the Lightning 4-step LoRA, same rules.

A request may also name up to ``MAX_REQUEST_LORAS`` LoRAs from the operator's allowlist
(``LORAS``), each with a scale; they are activated for that request only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from processor.domain.errors import InvalidInput
from processor.domain.reasons import ReasonCode
from processor.domain.rules import (
    LORA_NAME,
    MAX_LORA_SCALE,
    MAX_REQUEST_LORAS,
    MIN_LORA_SCALE,
    SPEED_PRESETS,
    SpeedPreset,
)


@dataclass(frozen=True, slots=True)
class LoraChoice:
    """One allowlisted LoRA a request activates, and at which scale (``None``: the allowlist's default)."""

    name: str
    scale: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale}


def check_speed(speed: object) -> SpeedPreset | None:
    """``None`` (the deployment's default) or one of ``SPEED_PRESETS``; ``InvalidInput`` otherwise."""
    if speed is None:
        return None
    if speed not in SPEED_PRESETS:
        raise InvalidInput(
            f"speed must be one of {', '.join(SPEED_PRESETS)}, got {speed!r}",
            reason=ReasonCode.INVALID_PARAMETER,
        )
    return speed


def parse_loras(value: object) -> tuple[LoraChoice, ...]:
    """A request's ``loras`` (a list of ``{"name", "scale"}`` or of names) as ``LoraChoice``s.

    Checks shape, names, scales, duplicates and the count; not the allowlist (the engine and
    the database know it). Raises ``InvalidInput('invalid_parameter')``.
    """
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidInput("loras must be a list of {name, scale}", reason=ReasonCode.INVALID_PARAMETER)
    choices: list[LoraChoice] = []
    for item in value:
        if isinstance(item, LoraChoice):
            choices.append(item)
            continue
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, Mapping) or set(item) - {"name", "scale"} or "name" not in item:
            raise InvalidInput(
                f"each LoRA is {{name, scale}}, got {item!r}", reason=ReasonCode.INVALID_PARAMETER
            )
        choices.append(LoraChoice(name=item["name"], scale=item.get("scale")))
    return check_loras(choices)


def check_loras(choices: Iterable[LoraChoice]) -> tuple[LoraChoice, ...]:
    """Raise ``InvalidInput`` for malformed names or scales, duplicates, or too many LoRAs."""
    checked = tuple(choices)
    if len(checked) > MAX_REQUEST_LORAS:
        raise InvalidInput(
            f"{len(checked)} LoRAs; at most {MAX_REQUEST_LORAS} per request",
            reason=ReasonCode.INVALID_PARAMETER,
        )
    seen: set[str] = set()
    for choice in checked:
        if not isinstance(choice.name, str) or not LORA_NAME.match(choice.name):
            raise InvalidInput(f"invalid LoRA name {choice.name!r}", reason=ReasonCode.INVALID_PARAMETER)
        if choice.name in seen:
            raise InvalidInput(f"LoRA {choice.name!r} named twice", reason=ReasonCode.INVALID_PARAMETER)
        seen.add(choice.name)
        scale = choice.scale
        if scale is not None and (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not math.isfinite(scale)
            or not MIN_LORA_SCALE <= scale <= MAX_LORA_SCALE
        ):
            raise InvalidInput(
                f"LoRA {choice.name!r}: scale must be from {MIN_LORA_SCALE} to {MAX_LORA_SCALE}, got {scale!r}",
                reason=ReasonCode.INVALID_PARAMETER,
            )
    return checked
