"""What live previews cost a denoising step (docs/previews.md).

    PYTHONPATH=. python benchmarks/preview_cost.py                  # tiny model, CPU
    PYTHONPATH=. python benchmarks/preview_cost.py --model Qwen/Qwen-Image-Edit-2509 --device cuda --size 1024

Two figures, both measured in the same run:

- **step time** with previews off and with a preview after every step (``--every 1``, the
  worst case; the default ``PREVIEW_EVERY_STEPS`` is 5), from the editor's own denoising timing,
  off and on runs interleaved so drift hits both alike, the fastest run of each (medians beside);
  the ratio is on/off;
- **step-path cost**: the work previews add inside the step callback (unpack, project, hand
  over), timed alone on latents of the edit's shape, and its share of the baseline step. The
  WebP encode and the upload run on other threads; on a GPU they do not touch the step, on a
  2-core CPU they compete with the model for cores, which the step-time ratio shows.

Without ``--model`` it builds the tiny random model into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.previews import PreviewWorker, project, unpack
from processor.domain.ports.editor import Preview, PreviewSink
from processor.domain.request import EditParams


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="hub id or local folder (default: a freshly built tiny model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--size", type=int, default=256, help="output side in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=1, help="a preview every this many steps (default 1)")
    parser.add_argument("--runs", type=int, default=15, help="timed edits per variant (default 15)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> DiffusersEditor:
    if args.model:
        return DiffusersEditor.load(args.model, device=args.device)
    from processor.adapters.diffusers.tiny_model import save_tiny_model

    folder = save_tiny_model(Path(tempfile.mkdtemp(prefix="preview-cost-")))
    return DiffusersEditor.load(folder, device=args.device)


def step_seconds(editor: DiffusersEditor, args: argparse.Namespace, every: int) -> tuple[float, int]:
    """Seconds per denoising step of one edit, and how many previews were delivered."""
    delivered: list[Preview] = []
    sink = PreviewSink(every, delivered.append) if every else None
    params = EditParams(
        prompt="make it blue", num_inference_steps=args.steps, seed=0, width=args.size, height=args.size
    )
    image = Image.new("RGB", (args.size, args.size), (200, 40, 90))
    result = editor.edit([image], params, previews=sink)
    return result.timings["denoising"] / args.steps, len(delivered)


def step_path_seconds(
    editor: DiffusersEditor, args: argparse.Namespace, batches: int = 20, size: int = 20
) -> float:
    """Seconds the step callback spends on one preview (unpack, project, hand-over), alone: the
    fastest of ``batches`` batches of ``size``, since on a shared machine other work only adds."""
    pipe = editor.pipeline
    factor = int(pipe.vae_scale_factor)
    z = int(pipe.vae.config.z_dim)
    tokens = (args.size // (factor * 2)) ** 2
    device = torch.device(pipe._execution_device)
    latents = torch.randn(1, tokens, 4 * z, device=device, dtype=pipe.transformer.dtype)
    weights = editor.preview_projection().to(device)
    worker = PreviewWorker(PreviewSink(1, lambda preview: None), batches * size)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    try:
        for _ in range(10):
            worker.offer(0, project(unpack(latents, args.size, args.size, factor), weights))
        for _ in range(batches):
            sync()
            started = time.perf_counter()
            for step in range(size):
                worker.offer(step, project(unpack(latents, args.size, args.size, factor), weights))
            sync()
            best = min(best, (time.perf_counter() - started) / size)
        return best
    finally:
        worker.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(0)
    editor = load(args)
    editor.preview_projection()  # fitted once, as warm-up does
    step_seconds(editor, args, 0)  # untimed: lazy initialisation
    step_seconds(editor, args, args.every)
    off: list[float] = []
    on: list[float] = []
    previews = 0
    for _ in range(args.runs):
        off.append(step_seconds(editor, args, 0)[0])
        seconds, count = step_seconds(editor, args, args.every)
        on.append(seconds)
        previews += count
    # The fastest run of each: on a shared machine other work only ever adds time, so the minimum
    # is the steadiest estimate of the intrinsic cost (medians are reported beside them).
    baseline, with_previews = min(off), min(on)
    path = step_path_seconds(editor, args)
    report = {
        "model": editor.describe()["model_id"],
        "device": editor.describe()["device"],
        "size": args.size,
        "steps": args.steps,
        "every": args.every,
        "runs": args.runs,
        "step_ms_without_previews": round(baseline * 1000, 3),
        "step_ms_with_previews": round(with_previews * 1000, 3),
        "ratio": round(with_previews / baseline, 4),
        "median_step_ms_without_previews": round(statistics.median(off) * 1000, 3),
        "median_step_ms_with_previews": round(statistics.median(on) * 1000, 3),
        "previews_delivered_per_edit": round(previews / args.runs, 1),
        "step_path_us_per_preview": round(path * 1e6, 1),
        "step_path_share_of_step": round(path / baseline, 5),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['model']} on {report['device']}, {args.size}² output, {args.steps} steps, "
            f"a preview every {args.every} step(s), fastest of {args.runs} runs each"
        )
        print(f"  step without previews   {report['step_ms_without_previews']:.3f} ms")
        print(f"  step with previews      {report['step_ms_with_previews']:.3f} ms")
        print(f"  ratio                   {report['ratio']:.4f}")
        print(
            f"  medians                 {report['median_step_ms_without_previews']:.3f} / "
            f"{report['median_step_ms_with_previews']:.3f} ms"
        )
        print(f"  previews delivered      {report['previews_delivered_per_edit']} per edit")
        print(
            f"  step-path cost          {report['step_path_us_per_preview']:.1f} µs per preview "
            f"({100 * report['step_path_share_of_step']:.2f}% of a step)"
        )
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
