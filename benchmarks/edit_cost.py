"""How well the charge (``processor.domain.cost``) follows the work, and what a LoRA cache miss costs.

    PYTHONPATH=. python benchmarks/edit_cost.py            # FLOPs of the real architecture + LoRA thrash
    PYTHONPATH=. python benchmarks/edit_cost.py --no-loras # FLOPs only

1. **FLOPs.** Builds Qwen-Image-Edit-2509's transformer (60 blocks, 20.4 B parameters) and VAE from their
   published configs on PyTorch's ``meta`` device (no weights, no memory, no GPU) and counts, with
   ``torch.utils.flop_counter.FlopCounterMode``, one transformer forward for each request shape at the
   sizes the pipeline uses (every input at the 1024² VAE area, 196 vision tokens each in the text
   stream), and the VAE encode of one input and decode of the output. Prints each shape's work per
   step relative to the model card's edit, next to what ``request_cost`` charges for it. FLOPs are not
   seconds (attention and convolutions run at other efficiencies than the big matrix products); on a
   GPU, ``benchmarks/edit_stages.py --model ... --images N`` gives the seconds to compare.
2. **LoRA cache thrash** (tiny model, CPU): ``--loras`` allowlisted LoRAs asked for in turn by
   consecutive edits with an adapter cache of ``--cache`` (``LORA_CACHE_SIZE``). Prints loads per edit
   and the seconds of a load against those of an edit (tiny sizes: the ratio is not the real model's).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from processor.domain.cost import cost_of
from processor.domain.request import EditParams

TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}
"""Qwen/Qwen-Image-Edit-2509 ``transformer/config.json``."""
VAE = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}
"""Qwen/Qwen-Image-Edit-2509 ``vae/config.json``."""
VISION_TOKENS = 196
"""Per input in the text stream: 384² resized to 392 x 392, 28-pixel patches merged 2x2."""
PROMPT = "replace the sky with a warm orange sunset"

SHAPES: list[tuple[str, int, int | None, int]] = [
    # name, inputs, output side (None: about 1 MP), prompt characters
    ("model card edit: 1 input, ~1 MP out", 1, None, len(PROMPT)),
    ("1 input, 512x512 out", 1, 512, len(PROMPT)),
    ("1 input, 32x32 out", 1, 32, len(PROMPT)),
    ("2 inputs, ~1 MP out", 2, None, len(PROMPT)),
    ("3 inputs, ~1 MP out", 3, None, len(PROMPT)),
    ("3 inputs, 32x32 out", 3, 32, len(PROMPT)),
    ("creation 1024x1024", 0, 1024, len(PROMPT)),
    ("creation 2048x2048", 0, 2048, len(PROMPT)),
    ("creation 32x32, 2,000-char prompt", 0, 32, 2000),
]


def transformer_flops(model: Any, inputs: int, side: int | None, text: int) -> int:
    out = (side or 1024) // 16
    shapes = [(1, out, out)] + [(1, 64, 64)] * inputs
    tokens = sum(f * h * w for f, h, w in shapes)
    hidden = torch.empty(1, tokens, 64, device="meta", dtype=torch.bfloat16)
    encoder = torch.empty(1, text, 3584, device="meta", dtype=torch.bfloat16)
    with FlopCounterMode(display=False) as counter:
        model(
            hidden_states=hidden,
            encoder_hidden_states=encoder,
            encoder_hidden_states_mask=torch.ones(1, text, device="meta", dtype=torch.bool),
            timestep=torch.empty(1, device="meta", dtype=torch.bfloat16),
            img_shapes=[shapes],
            return_dict=False,
        )
    return int(counter.get_total_flops())


def vae_flops(vae: Any) -> tuple[int, int]:
    with FlopCounterMode(display=False) as encode:
        vae.encode(torch.empty(1, 3, 1, 1024, 1024, device="meta", dtype=torch.bfloat16))
    with FlopCounterMode(display=False) as decode:
        vae.decode(torch.empty(1, 16, 1, 128, 128, device="meta", dtype=torch.bfloat16))
    return int(encode.get_total_flops()), int(decode.get_total_flops())


def flops_report() -> None:
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**TRANSFORMER).to(torch.bfloat16)
        vae = AutoencoderKLQwenImage(**VAE).to(torch.bfloat16)
    encode, decode = vae_flops(vae)
    print(f"transformer parameters: {sum(p.numel() for p in transformer.parameters()) / 1e9:.2f} B")
    print(
        f"VAE encode of one input (1 MP): {encode / 1e12:.1f} TFLOP; decode of 1 MP: {decode / 1e12:.1f} TFLOP"
    )
    print()
    print(f"{'request (true CFG)':40} {'TFLOP/step':>10} {'work':>7} {'charged':>8} {'charged/work':>13}")
    reference: float | None = None
    reference_cost: float | None = None
    for name, inputs, side, chars in SHAPES:
        # One step with true CFG: a forward with the prompt, one with the negative prompt (" ").
        flops = transformer_flops(transformer, inputs, side, inputs * VISION_TOKENS + chars)
        flops += transformer_flops(transformer, inputs, side, inputs * VISION_TOKENS + 1)
        params = EditParams(prompt="x" * chars, width=side, height=side)
        charged = cost_of(params, inputs, default_speed="quality")
        if reference is None:
            reference, reference_cost = flops, charged
        assert reference_cost is not None
        work = flops / reference
        relative = charged / reference_cost
        print(f"{name:40} {flops / 1e12:10.1f} {work:7.3f} {relative:8.3f} {relative / work:13.3f}")
    print("(work and charged: relative to the model card's edit; charged/work 1.000 is exact)")


def lora_report(count: int, cache: int, edits: int) -> None:
    from PIL import Image

    from processor.adapters.diffusers.engine import DiffusersEditor
    from processor.adapters.diffusers.loras import AllowedLora, LoraSource
    from processor.adapters.diffusers.tiny_model import save_tiny_lora, save_tiny_model
    from processor.domain.speed import LoraChoice

    with tempfile.TemporaryDirectory() as folder:
        model = save_tiny_model(Path(folder) / "model")
        names = [f"lora{index}" for index in range(count)]
        allowlist = {
            name: AllowedLora(
                name, LoraSource.parse(str(save_tiny_lora(Path(folder) / f"{name}.safetensors", seed=index)))
            )
            for index, name in enumerate(names)
        }
        editor = DiffusersEditor.load(model, device="cpu", loras=allowlist, lora_cache_size=cache)
        picture = Image.new("RGB", (64, 48), (200, 40, 90))
        base = EditParams(prompt="make it blue", seed=1, num_inference_steps=2)
        editor.edit([picture], base)  # warm
        started = time.perf_counter()
        for _ in range(edits):
            editor.edit([picture], base)
        plain = (time.perf_counter() - started) / edits
        before = editor.adapters.loads
        started = time.perf_counter()
        for index in range(edits):
            editor.edit([picture], dataclasses.replace(base, loras=(LoraChoice(names[index % count]),)))
        with_lora = (time.perf_counter() - started) / edits
        loads = editor.adapters.loads - before
    print(
        f"{count} LoRAs in turn, cache {cache}: {loads} loads in {edits} edits ({loads / edits:.2f} a request); "
        f"tiny model: {plain * 1000:.0f} ms an edit without a LoRA, {with_lora * 1000:.0f} ms with a load each"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-loras", action="store_true", help="skip the LoRA cache part")
    parser.add_argument("--loras", type=int, default=5, help="allowlisted LoRAs asked for in turn")
    parser.add_argument("--cache", type=int, default=4, help="LORA_CACHE_SIZE")
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args(argv)
    flops_report()
    if not args.no_loras:
        print()
        lora_report(args.loras, args.cache, args.edits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
