"""Memory modes side by side: peak memory, seconds per image and difference from ``full``.

    python benchmarks/memory_modes.py [--model DIR_OR_ID] [--device cuda] [--size 1024] [--steps 40]
                                      [--modes full offload quantized:nf4 quantized:int8]

Each mode loads the same weights in a fresh engine, runs one warm-up and one timed edit of
the same input with the same seed, and prints the peak GPU memory (CUDA) or the process's
peak resident memory (CPU), the seconds of the timed edit, and the mean and max absolute
pixel difference from ``full``'s output (0 to 255). Without ``--model`` it builds the tiny
random model, so it runs anywhere (numbers then say nothing about a real GPU).
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.tiny_model import save_tiny_model
from processor.domain.request import EditParams
from processor.domain.rules import MemoryMode, Quantization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or folder (default: the tiny random model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--size", type=int, default=1024, help="side of the square input and output")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--modes", nargs="+", default=["full", "offload", "quantized:nf4", "quantized:int8"])
    args = parser.parse_args()
    model = args.model or str(save_tiny_model(tempfile.mkdtemp(prefix="qep-tiny-")))
    size = args.size if args.model else 64
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    params = EditParams(
        prompt="make it blue", num_inference_steps=args.steps, seed=7, width=size, height=size
    )

    reference: np.ndarray | None = None
    print(f"model {model}, {size}×{size}, {args.steps} steps, true CFG 4.0")
    print(f"{'mode':<16} {'peak memory':>12} {'s/image':>8} {'mean diff':>10} {'max diff':>9}")
    for choice in args.modes:
        memory, _, quantization = choice.partition(":")
        cuda = torch.cuda.is_available() and args.device != "cpu"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            editor = DiffusersEditor.load(
                model,
                device=args.device,
                memory=_memory(memory),
                quantization=_quantization(quantization or "nf4"),
            )
        except Exception as exc:  # a mode this machine cannot run: say so and go on
            print(f"{choice:<16} not run: {exc}")
            continue
        editor.edit([image], params)
        started = time.perf_counter()
        output = np.asarray(editor.edit([image], params).image, dtype=np.float64)
        seconds = time.perf_counter() - started
        if cuda:
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        else:
            peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB*"
        if reference is None and memory == "full":
            reference = output
        mean_diff, max_diff = ("n/a", "n/a")
        if reference is not None:
            mean_diff = f"{np.abs(output - reference).mean():.3f}"
            max_diff = f"{np.abs(output - reference).max():.0f}"
        print(f"{choice:<16} {peak:>12} {seconds:>8.2f} {mean_diff:>10} {max_diff:>9}")
        del editor
        gc.collect()
    print("* CPU: the process's peak resident memory so far, not per mode")


def _memory(value: str) -> MemoryMode:
    if value not in ("full", "offload", "quantized"):
        raise SystemExit(f"unknown memory mode {value!r}")
    return value  # type: ignore[return-value]


def _quantization(value: str) -> Quantization:
    if value not in ("nf4", "int8"):
        raise SystemExit(f"unknown quantization {value!r}")
    return value  # type: ignore[return-value]


if __name__ == "__main__":
    main()
