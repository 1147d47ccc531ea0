"""An edit request's parameters: what every way in sends and every editor receives."""

from __future__ import annotations

from dataclasses import dataclass

from processor.domain import rules
from processor.domain.rules import Base, SpeedPreset
from processor.domain.speed import LoraChoice


@dataclass(frozen=True, slots=True)
class EditParams:
    """Generation parameters, with the model card's defaults."""

    prompt: str
    negative_prompt: str = rules.DEFAULT_NEGATIVE_PROMPT
    num_inference_steps: int = rules.DEFAULT_STEPS
    true_cfg_scale: float = rules.DEFAULT_TRUE_CFG_SCALE
    guidance_scale: float = rules.DEFAULT_GUIDANCE_SCALE
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    base: Base = rules.DEFAULT_BASE
    """Used only without input images: the engine then edits a canvas it builds."""
    base_color: str = rules.DEFAULT_BASE_COLOR
    """``#rrggbb`` of a ``blank`` canvas."""
    speed: SpeedPreset | None = None
    """``quality``, ``fast`` or ``fastest`` (``domain.speed``); ``None``: the deployment's ``SPEED``."""
    loras: tuple[LoraChoice, ...] = ()
    """Allowlisted LoRAs to activate for this edit only."""
