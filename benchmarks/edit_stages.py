"""Time Qwen-Image-Edit-2509 edits per stage and report peak memory.

    PYTHONPATH=. python benchmarks/edit_stages.py                       # tiny model, CPU, seconds
    PYTHONPATH=. python benchmarks/edit_stages.py --model Qwen/Qwen-Image-Edit-2509 --device cuda

Without ``--model`` it builds the tiny random model into a temporary folder, so the
script itself is tested on any machine; with the real model on a GPU it gives the
numbers the GPU work compares against. Each edit goes through ``DiffusersEditor``, the
same path the worker uses; stage times are synchronised with the device.

Stages: ``prompt_encoding`` (Qwen2.5-VL, twice with CFG), ``image_encoding`` (VAE encode
of the inputs), ``denoising`` (the transformer loop), ``decoding`` (VAE decode),
``total`` (all of it, under the editor's lock). Peak memory: ``torch.cuda`` peak
allocated and reserved bytes during the timed edits on CUDA; the process's peak RSS
(including the model load) everywhere.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.domain.request import EditParams

STAGES = ("prompt_encoding", "image_encoding", "denoising", "decoding", "total")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="hub id or local folder (default: a freshly built tiny model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument(
        "--memory", default="full", choices=["full", "offload", "quantized"], help="MEMORY_MODE to load with"
    )
    parser.add_argument(
        "--quantization", default="nf4", choices=["nf4", "int8"], help="for --memory quantized"
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--true-cfg-scale", type=float, default=4.0)
    parser.add_argument("--image-size", default="1024x1024", help="input size WxH (default 1024x1024)")
    parser.add_argument("--images", type=int, default=1, choices=[1, 2, 3], help="input images per edit")
    parser.add_argument("--width", type=int, help="explicit output width (with --height)")
    parser.add_argument("--height", type=int, help="explicit output height (with --width)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed edits first (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="timed edits (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def synthetic_images(count: int, size: str) -> list[Image.Image]:
    width, height = (int(side) for side in size.lower().split("x"))
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def summarise(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        stage: {
            "mean": statistics.fmean(sample[stage] for sample in samples),
            "p50": statistics.median(sample[stage] for sample in samples),
        }
        for stage in STAGES
    }


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def run(args: argparse.Namespace, model: str) -> dict[str, Any]:
    started = time.perf_counter()
    editor = DiffusersEditor.load(
        model, device=args.device, memory=args.memory, quantization=args.quantization
    )
    load_seconds = time.perf_counter() - started
    images = synthetic_images(args.images, args.image_size)
    params = EditParams(
        prompt="Replace the background with a sunny beach and keep the subject unchanged.",
        num_inference_steps=args.steps,
        true_cfg_scale=args.true_cfg_scale,
        seed=0,
        width=args.width,
        height=args.height,
    )
    for _ in range(args.warmup):
        editor.edit(images, params)
    cuda = editor.describe()["device"].startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    samples = [dict(editor.edit(images, params).timings) for _ in range(args.runs)]
    width, height = editor.output_size([image.size for image in images], args.width, args.height)
    report: dict[str, Any] = {
        "model": editor.describe(),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "load_seconds": load_seconds,
        "inputs": f"{args.images} × {args.image_size}",
        "output": f"{width}x{height}",
        "steps": args.steps,
        "true_cfg_scale": args.true_cfg_scale,
        "runs": len(samples),
        "stages": summarise(samples),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    report["seconds_per_image"] = report["stages"]["total"]["mean"]
    report["seconds_per_step"] = report["stages"]["denoising"]["mean"] / args.steps
    if cuda:
        report["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        report["cuda_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return report


def print_table(report: dict[str, Any]) -> None:
    model = report["model"]
    print(
        f"model    {model['model_id']}  ({model['dtype']} on {report['device_name']}, memory={model['memory_mode']})"
    )
    print(
        f"versions diffusers {model['diffusers']}, transformers {model['transformers']}, torch {model['torch']}"
    )
    print(
        f"edit     {report['inputs']} -> {report['output']}, {report['steps']} steps, "
        f"true_cfg_scale {report['true_cfg_scale']}, {report['runs']} timed runs, load {report['load_seconds']:.2f} s"
    )
    print(f"{'stage':<16}{'mean s':>10}{'p50 s':>10}")
    for stage, values in report["stages"].items():
        print(f"{stage:<16}{values['mean']:>10.4f}{values['p50']:>10.4f}")
    print(f"seconds per image {report['seconds_per_image']:.4f}, per step {report['seconds_per_step']:.4f}")
    print(f"peak RSS {report['peak_rss_bytes'] / 2**20:,.0f} MiB", end="")
    if "cuda_peak_allocated_bytes" in report:
        print(
            f", CUDA peak allocated {report['cuda_peak_allocated_bytes'] / 2**30:.2f} GiB"
            f" (reserved {report['cuda_peak_reserved_bytes'] / 2**30:.2f} GiB)",
            end="",
        )
    print()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="tiny-qwen-edit-") as scratch:
        model = args.model
        if model is None:
            from processor.adapters.diffusers.tiny_model import save_tiny_model

            model = str(save_tiny_model(Path(scratch) / "tiny"))
        report = run(args, model)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
