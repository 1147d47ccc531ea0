"""One GPU run, built to survive it: stock diffusers against the engine in its speed presets and
accelerations, on Qwen-Image-Edit-2509's full-size architecture with random bf16 weights built on
the device (nothing is downloaded; ``--zero-cond-t`` gives 2511's transformer).

    PYTHONPATH=. python benchmarks/gpu_speed.py --out gpu_speed.jsonl   # on a GPU (docs/speed.md)
    PYTHONPATH=. python benchmarks/gpu_speed.py --dry-run                # the plan, on any machine
    PYTHONPATH=. python benchmarks/gpu_speed.py --tiny --device cpu      # every variant, tiny model

What it does, in order (``gpubench/plan.py`` has the variants and why this order):

1. preflight, in seconds (``gpubench/preflight.py``): versions, driver against torch's CUDA, free
   device memory against the plan, FP8 (a float8 linear through torchao), the attention backend, a
   tiny ``torch.compile``, offline hub. A problem stops the run before the build; an unavailable
   feature only drops the variants that need it;
2. the build on the device (about 54 GiB at full size), then the variants by value: ``stock``,
   ``fast``, ``fast+compile``, ``fastest+compile``, ``fast+compile+fp8``, ``quality+compile``,
   ``fast fused``; then the stock short call again (drift).

Every step prints one JSON line as it finishes, to stdout and appended to ``--out``: a result, a
failure (out of memory included: memory is freed and the next variant runs) or a skip with its
reason. ``--deadline-seconds`` counts from the process start: a variant whose estimate (build, LoRA
creation, compiles and the FP8 weight swap included) does not fit the time left is skipped with a
line that says so, and one still running at the deadline is stopped. A ``summary`` line ends every
run; the table of results goes to stderr. Exit status 0, 1 when a variant failed, 2 when the
preflight or the build failed.

Per variant: seconds per image (median of the timed runs after a warm-up of the same shapes),
seconds per step, stage times, the transformer's sequence lengths per CFG branch and the FLOPs they
imply, achieved TFLOP/s and the fraction of the compute floor (``--peak-tflops``), peak device
memory, the error of the final latents against its reference variant (same seed), compiled frames,
graphs, graph breaks and recompile reasons. Dynamo's recompile limit (8) makes a variant fail
instead of silently running eager.
"""
# ruff: noqa: E402  (the environment and the import path come first)

from __future__ import annotations

import os
import sys
from pathlib import Path

# Nothing is downloaded: an attempt would hang on a machine without network, so the hub is offline
# before huggingface_hub reads its settings.
os.environ["HF_HUB_OFFLINE"] = "1"
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))  # gpubench/, beside this script

import argparse
import time
from types import SimpleNamespace
from typing import Any

import torch
from gpubench import model, plan, preflight
from gpubench.control import DeadlineReached, Recorder, finish, process_started, terminate_gracefully
from gpubench.plan import STOCK, Variant

from processor.adapters.diffusers.accelerate import fp8_layers

DEFAULT_DEADLINE = 400.0
"""Seconds from the process start (docs/speed.md: what fits in the device time a lent GPU gives)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--dry-run", action="store_true", help="plan the full-size run on the meta device")
    add("--tiny", action="store_true", help="the tiny random model (the CPU check)")
    add("--device", default="cuda", choices=["cuda", "cpu"])
    add("--dtype", choices=["bfloat16", "float32"], help="the tiny model's (default: float32 on CPU)")
    add("--zero-cond-t", action="store_true", help="2511's transformer config")
    add("--out", type=Path, help="append every JSON line to this file as well")
    add("--deadline-seconds", type=float, default=DEFAULT_DEADLINE, help="from the process start")
    add("--runs", type=int, default=3, help="timed edits of the 8- and 4-step variants")
    add("--quality-runs", type=int, default=1, help="timed edits of the 40-step variants")
    add("--quality-steps", type=int, default=40, help="steps of stock and quality (the CPU check: fewer)")
    add("--only", action="append", default=[], help="run only these variants, comma-separated (stock always)")
    add("--skip", action="append", default=[], help="skip these variants, comma-separated")
    add("--attention", help="attention backend of the compile variants (default _native_cudnn on CUDA)")
    add("--compile-backend", default="inductor", help="torch.compile backend (the CPU check: aot_eager)")
    add("--peak-tflops", type=float, default=800.0, help="achievable bf16 TFLOP/s: the compute floor")
    add("--assume-tflops", type=float, default=400.0, help="bf16 TFLOP/s the estimates assume")
    add("--memory-gib", type=float, default=78.0, help="device memory the dry run plans for")
    add("--no-smoke", action="store_true", help="preflight without its small runs on the device")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.quality_runs < 1 or args.quality_steps < 2:
        parser.error("--runs and --quality-runs must be at least 1, --quality-steps at least 2")
    args.attention = args.attention or ("_native_cudnn" if args.device == "cuda" else "native")
    return args


def main(argv: list[str] | None = None, *, started: float | None = None) -> int:
    """``started``: when the deadline's clock started (``time.monotonic``); the script passes the
    process start, a caller in a longer-lived process its own start."""
    args = parse_args(argv)
    started = time.monotonic() if started is None else started
    recorder = Recorder(args.out, started)
    torch.set_grad_enabled(False)
    if args.dry_run:
        return dry_run(args, recorder)
    with terminate_gracefully():
        try:
            return run(args, recorder, started + args.deadline_seconds)
        except (DeadlineReached, KeyboardInterrupt) as stop:
            recorder.emit({"event": "stopped", "why": str(stop) or type(stop).__name__})
            return finish(recorder, args, 1)


def chosen_plan(args: argparse.Namespace) -> list[Variant]:
    variants = plan.build_plan(
        attention=args.attention,
        runs=args.runs,
        quality_runs=args.quality_runs,
        quality_steps=args.quality_steps,
    )
    only = {name.strip() for item in args.only for name in item.split(",") if name.strip()}
    skip = {name.strip() for item in args.skip for name in item.split(",") if name.strip()}
    known = {variant.name for variant in variants}
    if unknown := (only | skip) - known:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; the plan has {sorted(known)}")
    return [
        variant
        for variant in variants
        if (variant.name == STOCK or not only or variant.name in only) and variant.name not in skip
    ]


def memory_needs(args: argparse.Namespace, capacity: int) -> dict[str, Any]:
    """The memory plan from the full-size constants (the dry run measures them on ``meta``)."""
    if args.tiny:
        return plan.memory_plan(weights=0, loras=0, tiny=True, capacity=capacity, fp8_host_copy=0)
    config = SimpleNamespace(**model.TRANSFORMER_CONFIG)
    return plan.memory_plan(
        weights=plan.FULL_SIZE_WEIGHT_BYTES,
        loras=2 * plan.lora_bytes(config, model.LORA_RANK),
        tiny=False,
        capacity=capacity,
        fp8_host_copy=plan.FULL_SIZE_FP8_BYTES,
    )


def sequence(processor: Any) -> dict[str, int]:
    """The transformer's sequence at 1 MP with one 1024² input: image tokens (output and input latents,
    2×2 patches of the 8× VAE) and text tokens per CFG branch (the processor's count less the 64 the
    pipeline drops)."""
    from PIL import Image

    condition = Image.new("RGB", (384, 384))  # the pipeline's 384² condition area, square input
    tokens = {"image": 2 * (1024 // 16) ** 2}
    for branch, prompt in (("cond", model.PROMPT), ("uncond", model.NEGATIVE_PROMPT)):
        ids = processor(
            text=[model.TEMPLATE.format(model.PICTURE + prompt)], images=[condition], return_tensors="pt"
        )["input_ids"]
        tokens[branch] = int(ids.shape[1]) - model.TEMPLATE_DROP
    return tokens


def full_size_costs(args: argparse.Namespace, tokens: dict[str, int]) -> plan.Costs:
    config = SimpleNamespace(**model.TRANSFORMER_CONFIG)
    forward = plan.forward_flop(config, tokens["image"], tokens["cond"])
    return plan.Costs.full_size(forward, tflops=args.assume_tflops, host_copy_bytes=plan.FULL_SIZE_FP8_BYTES)


def dry_run(args: argparse.Namespace, recorder: Recorder) -> int:
    """Build the full-size configs on ``meta`` and print the plan with its time and memory estimates."""
    memory = memory_needs(args, int(args.memory_gib * plan.GIB))
    check, seconds = preflight.run_preflight(
        torch.device("meta"),
        attention=args.attention,
        compile_backend=args.compile_backend,
        need_bytes=memory["peak_bytes"],
        fp8_host_bytes=plan.FULL_SIZE_FP8_BYTES,
    )
    recorder.emit(check.line(seconds))
    components = model.full_size_components(torch.device("meta"), zero_cond_t=args.zero_cond_t)
    transformer = components["transformer"]
    counts = {name: model.parameters(components[name]) for name in ("text_encoder", "transformer", "vae")}
    weights = sum(size for _, size in counts.values())
    modules = dict(transformer.named_modules())
    fp8_bytes = sum(model.parameters(modules[name])[1] for name in fp8_layers(transformer))
    tokens = sequence(components["processor"])
    recorder.emit(
        {
            "event": "model",
            "device": "meta",
            "parameters_billion": {name: round(count / 1e9, 4) for name, (count, _) in counts.items()},
            "total_parameters_billion": round(sum(count for count, _ in counts.values()) / 1e9, 4),
            "weights_gib": round(weights / plan.GIB, 3),
            "matches_constants": weights == plan.FULL_SIZE_WEIGHT_BYTES
            and fp8_bytes == plan.FULL_SIZE_FP8_BYTES,
            "sequence": tokens,
            "forward_tflop": {
                branch: round(
                    plan.forward_flop(transformer.config, tokens["image"], tokens[branch]) / 1e12, 2
                )
                for branch in ("cond", "uncond")
            },
            "fp8": plan.fp8_share(transformer),
        }
    )
    recorder.emit({"event": "memory", **memory})
    costs = full_size_costs(args, tokens)
    start = 15.0 + costs.build  # imports, preflight and the build before the first variant (est.)
    rows = plan.timeline(chosen_plan(args), costs, start=start, deadline=args.deadline_seconds)
    recorder.emit(
        {
            "event": "plan",
            "deadline_s": args.deadline_seconds,
            "assume_tflops": args.assume_tflops,
            "per_forward_s": round(costs.per_forward, 3),
            "start_s": start,
            "variants": rows,
            "skipped_by_deadline": [row["variant"] for row in rows if not row["fits"]],
            "drift_s": round(plan.drift_estimate(costs), 1),
        }
    )
    fits = memory["fits"] and not check.problems
    recorder.emit({"event": "summary", "dry_run": True, "fits": fits})
    return 0 if fits else 1


def run(args: argparse.Namespace, recorder: Recorder, deadline: float) -> int:
    """Preflight (seconds, no diffusers import), then the build and the variants (``runner``)."""
    device = torch.device(args.device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    memory = memory_needs(args, torch.cuda.get_device_properties(device).total_memory if cuda else 0)
    check, seconds = preflight.run_preflight(
        device,
        attention=args.attention,
        compile_backend=args.compile_backend,
        need_bytes=memory["peak_bytes"],
        fp8_host_bytes=memory["fp8_host_copy_bytes"],
        smoke=not args.no_smoke,
    )
    recorder.emit({**check.line(seconds), "memory_plan": memory})
    if check.problems:
        return finish(recorder, args, 2)
    from gpubench import runner  # diffusers: seconds to import, after the preflight

    if args.tiny:
        costs = plan.Costs.tiny(compile_backend=args.compile_backend)
    else:
        costs = full_size_costs(args, sequence(model.full_size_processor()))
    return runner.run(args, chosen_plan(args), check.unavailable, costs, recorder, deadline)


if __name__ == "__main__":
    sys.exit(main(started=process_started()))
