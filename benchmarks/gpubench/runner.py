"""The part of a run after the preflight: the build on the device, every variant in order within
the deadline (each one's failure caught, its memory freed, the next one run), the drift check and the
closing summary. Imported only once the preflight has passed: diffusers takes seconds to import."""

from __future__ import annotations

import argparse
import gc
import time
import traceback
from contextlib import suppress
from typing import Any

import torch
from PIL import Image

from gpubench import measure, model, plan
from gpubench.control import DeadlineReached, Recorder, alarm_at, finish
from gpubench.plan import STOCK, Variant
from processor.adapters.diffusers.accelerate import Accelerations, apply_accelerations
from processor.adapters.diffusers.compat import install_mrope_fix
from processor.adapters.diffusers.presets import LIGHTNING_ADAPTERS
from processor.domain.sizing import ModelSizing


def run(
    args: argparse.Namespace,
    variants: list[Variant],
    unavailable: dict[str, str],
    costs: plan.Costs,
    recorder: Recorder,
    deadline: float,
) -> int:
    bench = build(args, torch.device(args.device), recorder)
    if bench is None:
        return finish(recorder, args, 2)
    # Dynamo falls back to eager, with a log line only, when a block exceeds its recompile limit: make
    # that a failure of the variant, and log the reason of every recompile (CompileWatch collects them).
    torch._logging.set_logs(recompiles=True)  # type: ignore[attr-defined]
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            failures = run_variants(bench, variants, unavailable, costs, recorder, deadline)
    finally:
        torch._logging.set_logs()  # type: ignore[attr-defined]
    drift(bench, recorder, deadline)
    return finish(recorder, args, 1 if failures else 0)


def build(args: argparse.Namespace, device: torch.device, recorder: Recorder) -> measure.Bench | None:
    started = time.perf_counter()
    try:
        if args.tiny:
            from processor.adapters.diffusers.tiny_model import TINY_SIZING

            dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
            components, sizing = model.tiny_components(dtype), TINY_SIZING
            image = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
        else:
            components, sizing = (
                model.full_size_components(device, zero_cond_t=args.zero_cond_t),
                ModelSizing(),
            )
            image = Image.linear_gradient("L").resize((1024, 1024)).convert("RGB")
        for name in ("text_encoder", "transformer", "vae"):
            components[name].to(device)
    except Exception as exc:
        recorder.emit({"event": "failed", "variant": "build", **failure(exc)})
        return None
    # The engine's 3D-RoPE fix (diffusers 0.42.1 drops mm_token_type_ids; compat.py) on the shared text
    # encoder from the start: a pre-hook that costs nothing, so stock's latents differ from the
    # engine's only by what the engine does differently, not by that fix (0.4 % in bf16 on the tiny
    # model without it); the first editor would install it anyway, half-way through the plan.
    install_mrope_fix(components["text_encoder"])
    bench = measure.Bench(components, device, sizing, image, args.peak_tflops, args.tiny)
    if args.compile_backend != "inductor":  # the CPU check: Dynamo's frames and guards, no C++ build
        transformer = components["transformer"]
        compile_blocks = transformer.compile_repeated_blocks
        transformer.compile_repeated_blocks = lambda *a, **k: compile_blocks(
            *a, backend=args.compile_backend, **k
        )
    bench.sync()
    counts = {name: model.parameters(components[name]) for name in ("text_encoder", "transformer", "vae")}
    recorder.emit(
        {
            "event": "built",
            "model": "tiny"
            if args.tiny
            else ("2511" if args.zero_cond_t else "2509") + "-shaped random bf16",
            "seconds": round(time.perf_counter() - started, 2),
            "parameters_billion": round(sum(count for count, _ in counts.values()) / 1e9, 4),
            "weights_gib": round(sum(size for _, size in counts.values()) / plan.GIB, 3),
            "dtype": str(components["transformer"].dtype).removeprefix("torch."),
            "text_encoder_mrope_fix": True,
            "memory": bench.memory(),
        }
    )
    return bench


def run_variants(
    bench: measure.Bench,
    variants: list[Variant],
    unavailable: dict[str, str],
    costs: plan.Costs,
    recorder: Recorder,
    deadline: float,
) -> int:
    """Every variant in order within the deadline; a line each; returns how many failed."""
    failures = 0
    for variant in variants:
        estimate = plan.estimate(variant, costs, state_of(bench))
        why = unavailable_reason(variant, unavailable)
        left = deadline - plan.drift_estimate(costs) - time.monotonic()
        if why is None and estimate > left:
            why = f"deadline: ~{estimate:.0f} s estimated, {max(left, 0):.0f} s left"
        if why is not None:
            recorder.emit(
                {"event": "skipped", "variant": variant.name, "why": why, "estimate_s": round(estimate, 1)}
            )
            continue
        started = time.perf_counter()
        try:
            with alarm_at(deadline - plan.drift_estimate(costs)):
                line = run_variant(bench, variant)
        except DeadlineReached:
            recorder.emit(
                {
                    "event": "stopped",
                    "variant": variant.name,
                    "why": "deadline",
                    "estimate_s": round(estimate, 1),
                }
            )
            break
        except Exception as exc:
            failures += 1
            recorder.emit(
                {
                    "event": "failed",
                    "variant": variant.name,
                    "estimate_s": round(estimate, 1),
                    "seconds": round(time.perf_counter() - started, 2),
                    **failure(exc),
                }
            )
            free_memory(bench)
            continue
        line.update({"estimate_s": round(estimate, 1), "seconds": round(time.perf_counter() - started, 2)})
        recorder.emit(compare(line, variant, recorder, bench))
        if variant.name == STOCK:
            costs = costs.calibrate(line)
    return failures


def state_of(bench: measure.Bench) -> plan.State:
    return plan.State(loras_loaded=bool(bench.lightning), compiled=bench.compiled_once)


def unavailable_reason(variant: Variant, unavailable: dict[str, str]) -> str | None:
    acceleration = variant.accelerations
    if acceleration.fp8 and "fp8" in unavailable:
        return f"FP8 unavailable: {unavailable['fp8']}"
    if acceleration.compile and "compile" in unavailable:
        return f"compile unavailable: {unavailable['compile']}"
    if acceleration.attention_backend not in (None, "native") and "attention" in unavailable:
        return f"attention backend unavailable: {unavailable['attention']}"
    return None


def run_variant(bench: measure.Bench, variant: Variant) -> dict[str, Any]:
    line: dict[str, Any] = {
        "event": "result",
        "variant": variant.name,
        "kind": variant.kind,
        "speed": variant.speed,
        "steps": variant.steps,
        "accelerations": variant.accelerations.describe(),
    }
    if variant.kind == "stock":
        return {**line, **measure.run_stock(bench, variant), "memory": bench.memory()}
    setup: dict[str, float] = {}
    if variant.speed != "quality" and not bench.lightning:
        started = time.perf_counter()
        try:
            bench.lightning = model.load_lightning(bench.components, tiny=bench.tiny, device=bench.device)
        except BaseException:
            model.unload_loras(bench.components)  # half-loaded adapters would block the next try
            raise
        setup["loras_seconds"] = round(time.perf_counter() - started, 2)
    if variant.kind == "fused":
        return {**line, **run_fused(bench, variant, setup)}
    with measure.CompileWatch() as watch:
        if variant.accelerations.fp8:
            with measure.bf16_weights_kept(bench.components["transformer"]) as swap:
                report = run_engine_variant(bench, variant)
            line["fp8"] = {**swap, **plan.fp8_share(bench.components["transformer"])}
        else:
            report = run_engine_variant(bench, variant)
    if variant.accelerations.compile:
        bench.compiled_once = True
        line["compile"] = watch.report()
    return {**line, "setup": setup, **report, "memory": bench.memory()}


def run_engine_variant(bench: measure.Bench, variant: Variant) -> dict[str, Any]:
    from processor.adapters.diffusers.engine import DiffusersEditor

    editor = DiffusersEditor.from_components(
        bench.components,
        model_id="random-full-size" if not bench.tiny else "tiny",
        sizing=bench.sizing,
        lightning=bench.lightning if variant.speed != "quality" else None,
        accelerations=variant.accelerations,
    )
    try:
        return measure.run_engine(bench, editor, variant)
    finally:
        editor.close()


def run_fused(bench: measure.Bench, variant: Variant, setup: dict[str, float]) -> dict[str, Any]:
    from processor.adapters.diffusers.engine import DiffusersEditor

    started = time.perf_counter()
    measure.fuse_fast_lora(bench.components, LIGHTNING_ADAPTERS["fast"])
    bench.lightning = {}  # unloaded with their wrappers
    setup["fuse_seconds"] = round(time.perf_counter() - started, 2)
    editor = DiffusersEditor.from_components(
        measure.fused_components(bench.components),
        model_id="random-full-size" if not bench.tiny else "tiny",
        sizing=bench.sizing,
        accelerations=Accelerations(),
    )
    try:
        report = measure.run_engine(bench, editor, variant, measure.FUSED_PARAMS)
    finally:
        editor.close()
    return {"setup": setup, **report, "memory": bench.memory()}


def compare(
    line: dict[str, Any], variant: Variant, recorder: Recorder, bench: measure.Bench
) -> dict[str, Any]:
    """Ratios against the same run's stock result and reference variant, and the latents' error."""
    results = {result["variant"]: result for result in recorder.events("result")}
    stock = results.get(STOCK, line if variant.name == STOCK else None)
    if stock is not None:
        line["vs_stock"] = round(stock["seconds_per_image"] / line["seconds_per_image"], 3)
    if variant.reference is not None:
        reference = results.get(variant.reference)
        line["reference"] = variant.reference
        if reference is not None:
            line["vs_reference"] = round(reference["seconds_per_image"] / line["seconds_per_image"], 3)
        line["error_vs_reference"] = measure.latent_error(
            bench.latents.get(line["variant"]), bench.latents.get(variant.reference)
        )
    return line


def failure(exc: BaseException) -> dict[str, Any]:
    """What a failure line says: the error, whether it was memory or the recompile limit, where."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 5:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " <- ".join(f"{type(e).__name__}: {e}" for e in chain)[:1500]
    return {
        "error": text,
        "out_of_memory": any(
            isinstance(e, torch.cuda.OutOfMemoryError)
            or getattr(e, "reason", None) == "out_of_memory"  # the engine's ModelError
            or "out of memory" in str(e).lower()
            for e in chain
        ),
        "recompile_limit": any(type(e).__name__ == "FailOnRecompileLimitHit" for e in chain),
        "where": traceback.format_exception(exc)[-2].strip()[-300:] if exc.__traceback__ else None,
    }


def free_memory(bench: measure.Bench) -> None:
    gc.collect()
    if bench.cuda:
        torch.cuda.empty_cache()
        with suppress(Exception):
            torch.cuda.reset_peak_memory_stats(bench.device)


def drift(bench: measure.Bench, recorder: Recorder, deadline: float) -> None:
    """The stock short call again, on the stock configuration (no LoRA wrappers, eager, default
    attention): a slower GPU at the end (heat, clocks, a neighbour) shows here."""
    from diffusers import QwenImageEditPlusPipeline

    stock = next(iter(recorder.events("result")), None)
    first = stock.get("short_call") if stock and stock["variant"] == STOCK else None
    try:
        with alarm_at(deadline):
            unloaded = model.unload_loras(bench.components)
            bench.lightning = {}
            pipeline = QwenImageEditPlusPipeline(**bench.components)
            pipeline.set_progress_bar_config(disable=True)
            apply_accelerations(pipeline, Accelerations(), bench.device)
            probe = measure.Probe(pipeline, bench.sync)
            try:
                again = measure.stock_call(bench, pipeline, probe, plan.SHORT_STOCK_STEPS)
            finally:
                probe.close()
    except DeadlineReached:
        recorder.emit({"event": "skipped", "variant": "drift", "why": "deadline"})
        return
    except Exception as exc:
        recorder.emit({"event": "failed", "variant": "drift", **failure(exc)})
        return
    ratio = again["denoising"] / first["denoising"] if first and first["denoising"] else None
    recorder.emit(
        {
            "event": "drift",
            "loras_unloaded": unloaded,
            "start": first,
            "end": again,
            "end_over_start": round(ratio, 3) if ratio else None,
        }
    )
