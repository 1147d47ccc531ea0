"""Speed presets for the diffusers engine: what ``quality``, ``fast`` and ``fastest`` run.

* ``quality``: the request's own steps and ``true_cfg_scale`` (default 40 and 4.0) on the
  model's own scheduler config, exactly as shipped.
* ``fast`` / ``fastest``: the Lightning 8- / 4-step LoRA of the loaded model, CFG off
  (``true_cfg_scale`` 1, so the pipeline runs one forward per step and no negative
  prompt), and the scheduler as the Lightning authors configure it in their
  ``generate_with_diffusers.py``: shift 3 through ``base_shift = max_shift = log 3`` with
  dynamic shifting, ``shift_terminal`` None, exponential time shift ("We use shift=3 in
  distillation"). Without that scheduler the output is garbage (nunchaku#735).

Every run gets a *new* scheduler built from one of two frozen configs, so nothing a run
leaves in a scheduler (timesteps, step index, a preset's shift) reaches the next one: a
``quality`` run after a ``fast`` one is byte-identical to a ``quality`` run in a fresh
process (tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from processor.domain.rules import LIGHTNING_STEPS, SpeedPreset

LIGHTNING_SCHEDULER_CONFIG: Mapping[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": math.log(3),  # "We use shift=3 in distillation"
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": math.log(3),
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": None,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}
"""``FlowMatchEulerDiscreteScheduler`` config of ``ModelTC/Qwen-Image-Lightning:generate_with_diffusers.py``
(also diffusers PR #12119's test snippet), key for key."""

LIGHTNING_ADAPTERS: Mapping[SpeedPreset, str] = {"fast": "lightning_8step", "fastest": "lightning_4step"}
"""PEFT adapter names the Lightning LoRAs are loaded under (pinned: never evicted)."""

KNOWN_LIGHTNING: Mapping[str, Mapping[SpeedPreset, str]] = {
    "Qwen/Qwen-Image-Edit-2509": {
        "fast": "lightx2v/Qwen-Image-Lightning/Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors",
        "fastest": "lightx2v/Qwen-Image-Lightning/Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors",
    },
    "Qwen/Qwen-Image-Edit-2511": {
        "fast": "lightx2v/Qwen-Image-Edit-2511-Lightning/Qwen-Image-Edit-2511-Lightning-8steps-V1.0-bf16.safetensors",
        "fastest": "lightx2v/Qwen-Image-Edit-2511-Lightning/Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors",
    },
}
"""What ``LIGHTNING_8STEP_LORA=auto`` / ``LIGHTNING_4STEP_LORA=auto`` mean per model id: the
published files (``ModelTC/Qwen-Image-Lightning`` README, HF ``lightx2v/*``)."""


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What one edit runs: preset, steps, guidance, scheduler config and the adapters with weights."""

    speed: SpeedPreset
    steps: int
    true_cfg_scale: float
    scheduler_config: Mapping[str, Any]
    adapters: tuple[tuple[str, float], ...] = ()
    """``(peft adapter name, weight)`` to activate; empty: every adapter disabled."""
    loras: tuple[Mapping[str, Any], ...] = field(default=())
    """The request's LoRAs as they ran: ``{"name", "scale"}``."""

    def record(self) -> dict[str, Any]:
        """What ``result`` says about how the edit ran."""
        return {
            "speed": self.speed,
            "true_cfg_scale": self.true_cfg_scale,
            "scheduler": "lightning" if self.speed in LIGHTNING_STEPS else "model",
            "loras": [dict(lora) for lora in self.loras],
        }


def preset_plan(
    speed: SpeedPreset,
    *,
    steps: int,
    true_cfg_scale: float,
    model_scheduler_config: Mapping[str, Any],
) -> tuple[int, float, Mapping[str, Any], str | None]:
    """``(steps, true_cfg_scale, scheduler config, Lightning adapter or None)`` for a preset."""
    if speed == "quality":
        return steps, true_cfg_scale, model_scheduler_config, None
    return LIGHTNING_STEPS[speed], 1.0, LIGHTNING_SCHEDULER_CONFIG, LIGHTNING_ADAPTERS[speed]
