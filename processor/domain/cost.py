"""What a request is charged against ``max_cost_per_hour``: the work the GPU does for it.

One formula, mirrored by the SQL function ``edit_request_cost`` (``supabase/schemas/25_fair_sharing_and_limits.sql``)
that the insert trigger charges with; ``tests/test_request_cost.py`` proves both equal over many
parameter combinations. ``docs/fair-sharing.md`` explains it with worked examples; decision record
0070 says why it is built so.

The unit is one **default step**: one denoising step of the model card's edit (one input image, an
output of about 1 MP, true CFG: two transformer forwards over 8,388 tokens), so a default 40-step
edit costs 40 (plus a little for its prompt), as it did when the charge was steps x output megapixels.

* A forward over ``T`` tokens does work ``T x (1 + T / COST_ATTENTION_TOKENS)`` (linear layers, and
  joint attention, quadratic in ``T``). ``T`` is the output's tokens (``width x height / 256``;
  1 MP when no size is named) + ``COST_INPUT_TOKENS`` per input image (each is resized to the
  pipeline's own areas whatever its size) + one token per byte of the prompt's NFC form in UTF-8
  (``text_bytes``; the negative prompt for CFG's second forward): the most tokens the tokenizer can
  make of it, whatever its script (``prompt_chars`` and SQL's ``p_prompt_chars`` count these bytes).
  It over-counts English and Chinese text about fourfold; the text is a small part of every request
  that has an image.
* Each step runs one forward, two with true CFG (``true_cfg_scale`` other than 1).
* A speed preset other than ``quality`` replaces the steps (``LIGHTNING_STEPS``), turns CFG off and
  activates its Lightning adapter. ``speed`` null is the deployment's default: the caller says which it
  is (``default_speed``; SQL reads ``edit_queue_settings.default_speed``), and when nobody knows, the
  costlier of ``quality`` and ``fast`` is charged, so a request is never charged less than it runs.
* Each active LoRA adapter adds ``COST_LORA_FORWARD_SHARE`` to every forward; each LoRA the request
  names adds ``COST_LORA_LOAD`` (its load, when the adapter cache does not hold it).

Not charged: the text encoder and the VAE (under 5 % of even a 4-step edit's FLOPs), and the small
fixed part of the text template.
"""

from __future__ import annotations

from processor.domain.request import EditParams, text_bytes
from processor.domain.rules import (
    COST_ATTENTION_TOKENS,
    COST_DEFAULT_OUTPUT_PIXELS,
    COST_INPUT_TOKENS,
    COST_LORA_FORWARD_SHARE,
    COST_LORA_LOAD,
    COST_PIXELS_PER_TOKEN,
    LIGHTNING_STEPS,
    SpeedPreset,
)


def forward_work(tokens: float) -> float:
    """The work of one transformer forward over ``tokens`` tokens, in tokens of linear-layer work."""
    return tokens * (1 + tokens / COST_ATTENTION_TOKENS)


DEFAULT_STEP_WORK = 2 * forward_work(COST_DEFAULT_OUTPUT_PIXELS / COST_PIXELS_PER_TOKEN + COST_INPUT_TOKENS)
"""The unit: one step of the model card's edit (one input, about 1 MP out, true CFG), no prompt."""


def run_cost(
    *,
    steps: int,
    cfg: bool,
    adapters: int,
    width: int | None,
    height: int | None,
    inputs: int,
    prompt_chars: int,
    negative_chars: int,
    loras: int,
) -> float:
    """The cost of one way of running a request (SQL: ``edit_request_run_cost``, the same arithmetic in
    the same order, so both give the same double)."""
    pixels = width * height if width is not None and height is not None else COST_DEFAULT_OUTPUT_PIXELS
    image = float(pixels) / COST_PIXELS_PER_TOKEN + inputs * COST_INPUT_TOKENS
    work = forward_work(image + prompt_chars) + (forward_work(image + negative_chars) if cfg else 0.0)
    return (
        steps * work * (1 + adapters * COST_LORA_FORWARD_SHARE) / DEFAULT_STEP_WORK + COST_LORA_LOAD * loras
    )


def request_cost(
    *,
    steps: int,
    true_cfg_scale: float,
    speed: SpeedPreset | None,
    width: int | None,
    height: int | None,
    inputs: int,
    prompt_chars: int,
    negative_chars: int,
    loras: int,
) -> float:
    """What a request is charged (SQL: ``edit_request_cost``, same arguments). ``speed`` None: the
    deployment's default is not known here, so the costlier of ``quality`` and ``fast``."""

    def way(steps: int, cfg: bool, adapters: int) -> float:
        return run_cost(
            steps=steps,
            cfg=cfg,
            adapters=adapters,
            width=width,
            height=height,
            inputs=inputs,
            prompt_chars=prompt_chars,
            negative_chars=negative_chars,
            loras=loras,
        )

    # quality: the request's steps, true CFG unless the scale is 1 (diffusers also skips it below 1,
    # ComfyUI does not); a Lightning preset: its steps, CFG off, its adapter active.
    quality = way(steps, true_cfg_scale != 1, loras)
    if speed == "quality":
        return quality
    if speed is not None:
        return way(LIGHTNING_STEPS[speed], False, loras + 1)
    return max(quality, way(LIGHTNING_STEPS["fast"], False, loras + 1))


def cost_of(params: EditParams, inputs: int, *, default_speed: SpeedPreset | None = None) -> float:
    """What a request with these parameters and ``inputs`` input images is charged, where the
    deployment's default speed is ``default_speed`` (None: not known)."""
    return request_cost(
        steps=params.num_inference_steps,
        true_cfg_scale=params.true_cfg_scale,
        speed=params.speed or default_speed,
        width=params.width,
        height=params.height,
        inputs=inputs,
        prompt_chars=text_bytes(params.prompt),
        negative_chars=text_bytes(params.negative_prompt),
        loras=len(params.loras),
    )
