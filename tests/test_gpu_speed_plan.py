"""``benchmarks/gpu_speed.py`` is ready for its one GPU run, proven on CPU: the dry run plans the
full-size model on the meta device within an 80 GB H100; the tiny model runs through every variant
(FP8 skipped with its reason); every line is written as it happens; a failure, out of memory
included, loses nothing and the next variant runs; the deadline skips what cannot fit and stops what
overruns; the preflight fails in seconds; and FP8, with torchao's hardware check lifted on CPU,
converts exactly the chosen layers, errs a little, and gives the bf16 weights back.

Compile variants run with Dynamo's ``eager`` backend here (frames, guards and recompiles are
Dynamo's; inductor's C++ build of the tiny blocks takes minutes on 2 cores and is covered by
``test_compile_and_attention.py``)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_speed.py"
EVERY_VARIANT = ["stock", "fast", "fast+compile", "fastest+compile", "quality+compile", "fast fused"]
pytestmark = pytest.mark.benchmark

CPU_CHECK = ["--tiny", "--device", "cpu", "--compile-backend", "eager", "--runs", "1", "--quality-steps", "4"]


@pytest.fixture(scope="module")
def gpu_speed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_speed", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_speed"] = module
    spec.loader.exec_module(module)  # puts benchmarks/ on the import path for gpubench
    return module


@pytest.fixture(autouse=True)
def forget_compiled_code() -> Iterator[None]:
    """Dynamo's caches live on code objects shared by every module of the process: each test starts
    from an empty cache (whatever ran before it in this process), and what it compiles (another
    backend, bf16 and float8 weights) does not count against later tests' limit."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def by_event(lines: list[dict[str, Any]], event: str) -> dict[str, dict[str, Any]]:
    return {line.get("variant", event): line for line in lines if line["event"] == event}


def test_the_dry_run_plans_the_full_size_model_within_an_80_gb_h100(
    gpu_speed: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan.jsonl"
    assert gpu_speed.main(["--dry-run", "--out", str(out)]) == 0
    lines = lines_of(capsys.readouterr().out)
    assert lines == lines_of(out.read_text())
    assert [line["event"] for line in lines] == ["preflight", "model", "memory", "plan", "summary"]
    preflight, built, memory, plan, summary = lines
    assert preflight["ok"] and preflight["hf_hub_offline"]
    # 2509's architecture at full size, counted on the meta device: 28.85 B parameters, 53.7 GiB bf16.
    assert built["device"] == "meta" and built["matches_constants"]
    assert round(built["total_parameters_billion"], 2) == 28.85
    assert 53.6 < built["weights_gib"] < 53.8
    # The sequence of a 1 MP edit of one 1024² input: 8192 image tokens, a real prompt's text length.
    sequence = built["sequence"]
    assert sequence["image"] == 8192
    assert 200 < sequence["uncond"] < sequence["cond"] < 260
    # FP8 converts 11 of the 14 linears of each of the 60 blocks (sglang's preset keeps modulation and
    # img_mlp.net.2): two thirds of the image tokens' linear FLOPs, all of the text tokens'.
    fp8 = built["fp8"]
    assert fp8["converted_layers"] == 660 and fp8["bf16_layers"] == 180
    assert fp8["share_of_linear_flops"] == {"image": pytest.approx(2 / 3, abs=1e-3), "text": 1.0}
    # Weights, two rank-64 LoRAs, activations and the CUDA context fit an 80 GB H100 (78 GiB usable).
    assert memory["fits"] and memory["peak_gib"] <= 78
    assert memory["weights_gib"] == pytest.approx(53.74, abs=0.01) and memory["loras_gib"] == pytest.approx(
        2.2, abs=0.01
    )
    # The plan in order of value, every step with its estimate, and what the deadline would cut.
    assert [row["variant"] for row in plan["variants"]] == [
        "stock",
        "fast",
        "fast+compile",
        "fastest+compile",
        "fast+compile+fp8",
        "quality+compile",
        "fast fused",
    ]
    assert all(row["estimate_s"] > 0 for row in plan["variants"])
    assert plan["variants"][0]["fits"] and plan["variants"][1]["fits"]
    assert plan["skipped_by_deadline"] == [row["variant"] for row in plan["variants"] if not row["fits"]]
    assert summary["fits"]


def test_the_prompt_tokenizer_gives_the_system_prefix_the_64_tokens_the_pipeline_drops(
    gpu_speed: ModuleType,
) -> None:
    model = importlib.import_module("gpubench.model")
    tokenizer = model.prompt_tokenizer()
    prefix = model.TEMPLATE.split("{}")[0]
    assert len(tokenizer(prefix)["input_ids"]) == model.TEMPLATE_DROP == 64
    ids = tokenizer(model.TEMPLATE.format(model.PICTURE + model.PROMPT))["input_ids"]
    kept = tokenizer.convert_ids_to_tokens(ids[model.TEMPLATE_DROP :])
    assert kept[:2] == ["Picture", "Ġ"] and "Ġbeach" in kept  # the drop eats nothing of the request
    assert "<|endoftext|>" not in kept  # every piece of the prompt is a known token


def test_the_tiny_model_runs_through_every_variant_and_each_line_is_written_as_it_finishes(
    gpu_speed: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny.jsonl"
    assert gpu_speed.main([*CPU_CHECK, "--deadline-seconds", "3600", "--out", str(out)]) == 0
    lines = lines_of(capsys.readouterr().out)
    assert lines == lines_of(out.read_text())
    assert [line["elapsed_s"] for line in lines] == sorted(line["elapsed_s"] for line in lines)
    results, skipped = by_event(lines, "result"), by_event(lines, "skipped")
    assert list(results) == EVERY_VARIANT
    assert (
        "FP8 unavailable" in skipped["fast+compile+fp8"]["why"]
        and "CUDA" in skipped["fast+compile+fp8"]["why"]
    )
    stock = results["stock"]
    # Each CFG branch at its own text length, and the FLOPs counted per branch.
    cond, uncond = stock["sequences"]
    assert cond["forwards"] == uncond["forwards"] == 4 and uncond["text_tokens"] < cond["text_tokens"]
    assert results["fast"]["forwards"] == 8 and results["fastest+compile"]["forwards"] == 4
    for name, result in results.items():
        assert result["seconds_per_image"] > 0 and result["vs_stock"] > 0, name
        assert set(result["stages"]) >= {"total"}, name
    # Compiled frames per variant; the adapter switch of fastest recompiles, and says why.
    assert results["fast+compile"]["compile"]["frames_compiled"] >= 1
    assert results["fastest+compile"]["compile"]["recompile_reasons"]
    assert all(results[name]["frames_compiled_in_timed_runs"] == 0 for name in EVERY_VARIANT[1:])
    # Lossless variants against their references, same seed: the engine's quality is stock's edit.
    # Dynamo's eager backend runs the same operations; a traced graph may still order a reduction
    # differently (CI saw 8e-08), so "lossless" is float32 rounding, not bit equality.
    assert results["fast+compile"]["error_vs_reference"]["relative_l1"] < 1e-6
    assert results["quality+compile"]["error_vs_reference"]["relative_l1"] < 1e-6
    assert results["fast fused"]["error_vs_reference"]["relative_l1"] < 1e-5  # float32 fusion rounding
    assert results["fast fused"]["setup"]["fuse_seconds"] >= 0
    drift = by_event(lines, "drift")["drift"]
    assert drift["start"]["denoising"] > 0 and drift["end"]["denoising"] > 0 and drift["end_over_start"] > 0
    assert lines[-1]["event"] == "summary" and lines[-1]["exit"] == 0


def fake_bench(gpu_speed: ModuleType) -> Any:
    from PIL import Image

    from processor.domain.sizing import ModelSizing

    measure = importlib.import_module("gpubench.measure")
    return measure.Bench({}, torch.device("cpu"), ModelSizing(), Image.new("RGB", (8, 8)), 1.0, True)


def fake_result(name: str) -> dict[str, Any]:
    return {
        "event": "result",
        "variant": name,
        "seconds_per_image": 1.0,
        "seconds_per_step": 0.1,
        "stages": {"total": 1.0},
        "forwards": 1,
    }


def test_a_failure_out_of_memory_included_loses_no_line_and_the_next_variants_run(
    gpu_speed: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = importlib.import_module("gpubench.runner")
    out = tmp_path / "lines.jsonl"
    on_disk_before: dict[str, list[str]] = {}

    def run_variant(bench: Any, variant: Any) -> dict[str, Any]:
        on_disk_before[variant.name] = [json.loads(line)["event"] for line in out.read_text().splitlines()]
        if variant.name == "fastest+compile":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if variant.name == "quality+compile":
            raise RuntimeError("a late failure")
        return fake_result(variant.name)

    monkeypatch.setattr(runner, "build", lambda *_: fake_bench(gpu_speed))
    monkeypatch.setattr(runner, "run_variant", run_variant)
    monkeypatch.setattr(runner, "drift", lambda bench, recorder, deadline: recorder.emit({"event": "drift"}))
    assert gpu_speed.main(["--tiny", "--device", "cpu", "--no-smoke", "--out", str(out)]) == 1
    lines = lines_of(capsys.readouterr().out)
    assert lines == lines_of(out.read_text())
    # Each variant found the previous one's line already on disk.
    assert on_disk_before["fast"] == ["preflight", "result"]
    assert (
        on_disk_before["fast fused"].count("result") == 3
        and on_disk_before["fast fused"].count("failed") == 2
    )
    failed = by_event(lines, "failed")
    assert (
        failed["fastest+compile"]["out_of_memory"]
        and "Tried to allocate" in failed["fastest+compile"]["error"]
    )
    assert (
        not failed["quality+compile"]["out_of_memory"]
        and "a late failure" in failed["quality+compile"]["error"]
    )
    assert list(by_event(lines, "result")) == ["stock", "fast", "fast+compile", "fast fused"]
    assert [line["event"] for line in lines[-2:]] == ["drift", "summary"]
    assert lines[-1]["failed"] == ["fastest+compile", "quality+compile"] and lines[-1]["exit"] == 1


def test_the_deadline_skips_what_cannot_fit_and_stops_what_overruns(
    gpu_speed: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runner, plan = importlib.import_module("gpubench.runner"), importlib.import_module("gpubench.plan")
    # Compiles estimated at 1000 s; everything else free: the compile variants cannot fit.
    costs = plan.Costs(
        per_forward=0, per_image=0, build=0, loras=0, first_compile=1000, recompile=1000, fp8_swap=0, fuse=0
    )
    monkeypatch.setattr(plan.Costs, "tiny", classmethod(lambda cls, **_: costs))
    started: dict[str, float] = {}

    def run_variant(bench: Any, variant: Any) -> dict[str, Any]:
        started[variant.name] = time.monotonic()
        if variant.name == "fast fused":  # overruns: works until something stops it
            while time.monotonic() < started[variant.name] + 120:
                time.sleep(0.05)
        return fake_result(variant.name)

    monkeypatch.setattr(runner, "build", lambda *_: fake_bench(gpu_speed))
    monkeypatch.setattr(runner, "run_variant", run_variant)
    monkeypatch.setattr(runner, "drift", lambda bench, recorder, deadline: recorder.emit({"event": "drift"}))
    began = time.monotonic()
    status = gpu_speed.main(
        ["--tiny", "--device", "cpu", "--no-smoke", "--deadline-seconds", "15"], started=began
    )
    lines = lines_of(capsys.readouterr().out)
    assert status == 0
    skipped = by_event(lines, "skipped")
    for name in ("fast+compile", "fastest+compile", "quality+compile"):
        assert skipped[name]["why"].startswith("deadline: ~1000 s estimated"), skipped[name]
    assert list(by_event(lines, "result")) == ["stock", "fast"]
    stopped = by_event(lines, "stopped")["fast fused"]
    # Stopped at the deadline less the drift check's reserve (5 s), long before it would have ended.
    assert stopped["why"] == "deadline" and time.monotonic() - began < 30
    assert [line["event"] for line in lines[-2:]] == ["drift", "summary"]


def test_the_preflight_fails_in_seconds_on_a_machine_without_a_gpu_driver(
    gpu_speed: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lines.jsonl"
    began = time.monotonic()
    assert gpu_speed.main(["--device", "cuda", "--out", str(out)], started=began) == 2
    lines = lines_of(capsys.readouterr().out)
    assert [line["event"] for line in lines] == ["preflight", "summary"]  # nothing built
    assert lines[0]["problems"] and not lines[0]["ok"]
    assert "versions" in lines[0] and lines[0]["memory_plan"]["peak_gib"] > 60
    assert time.monotonic() - began < 60


def test_the_preflight_refuses_a_hub_that_is_not_offline(
    gpu_speed: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    preflight = importlib.import_module("gpubench.preflight")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    check, _ = preflight.run_preflight(
        torch.device("cpu"),
        attention="native",
        compile_backend="eager",
        need_bytes=0,
        fp8_host_bytes=0,
        smoke=False,
    )
    assert any("HF_HUB_OFFLINE" in problem for problem in check.problems)


def test_fp8_with_torchaos_hardware_check_lifted_converts_the_chosen_layers_and_gives_bf16_back(
    gpu_speed: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """torchao refuses float8 without CUDA >= 8.9; its kernels' reference path runs on CPU once the
    check is lifted, which is as close to the GPU path as this machine gets."""
    quant_api = pytest.importorskip("torchao.quantization.quant_api")  # the dev extra installs it

    from processor.adapters.diffusers import accelerate

    runner, preflight = (
        importlib.import_module("gpubench.runner"),
        importlib.import_module("gpubench.preflight"),
    )
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda *_: None)
    monkeypatch.setattr(accelerate, "check_fp8", lambda device: None)
    monkeypatch.setattr(preflight, "check_fp8", lambda device: None)
    built: dict[str, Any] = {}
    build = runner.build

    def keep(*args: Any) -> Any:
        bench = build(*args)
        transformer = bench.components["transformer"]
        built["bench"], built["before"] = (
            bench,
            transformer.transformer_blocks[0].attn.to_q.weight.detach().clone(),
        )
        return bench

    monkeypatch.setattr(runner, "build", keep)
    argv = [*CPU_CHECK, "--dtype", "bfloat16", "--only", "fast+compile,fast+compile+fp8"]
    assert gpu_speed.main(argv) == 0
    lines = lines_of(capsys.readouterr().out)
    results = by_event(lines, "result")
    assert list(results) == ["stock", "fast+compile", "fast+compile+fp8"]
    fp8 = results["fast+compile+fp8"]
    # 2 blocks × 11 linears, every one of them really float8 (torchao skips odd shapes silently).
    assert fp8["fp8"]["converted_layers"] == fp8["fp8"]["float8_layers"] == 22
    # Whether the float8 weights recompile a graph or land in a fresh one depends on what Dynamo
    # already cached (this module resets it before each test); that the compiled variant really ran,
    # and compiled nothing while it was timed, is what is promised.
    assert fp8["compile"]["frames_compiled"] >= 1
    assert fp8["frames_compiled_in_timed_runs"] == 0
    error = fp8["error_vs_reference"]["relative_l1"]
    assert 0 < error < 0.1, error  # lossy, but the same edit
    transformer = built["bench"].components["transformer"]
    assert not accelerate.fp8_applied(transformer)
    weight = transformer.transformer_blocks[0].attn.to_q.weight  # the drift check unloaded the LoRAs
    assert type(weight) is torch.nn.Parameter and torch.equal(weight, built["before"])


def test_the_deadline_alarm_leaves_an_earlier_alarm_its_turn_and_sets_a_later_one_again(
    gpu_speed: ModuleType,
) -> None:
    control = importlib.import_module("gpubench.control")
    saved_handler, saved_timer = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    fired: list[float] = []
    try:
        signal.signal(signal.SIGALRM, lambda *_: fired.append(time.monotonic()))
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # an earlier alarm (a test runner's timeout, say)
        began = time.monotonic()
        with pytest.raises(control.DeadlineReached), control.alarm_at(began + 1.0):
            while time.monotonic() < began + 30:
                time.sleep(0.01)
        reached = time.monotonic()
        assert len(fired) == 1 and fired[0] < reached  # the earlier one fired first, once
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # and is not set again
        assert reached - began < 30  # and the deadline still came
        signal.setitimer(signal.ITIMER_REAL, 60)  # a later alarm
        set_at = time.monotonic()
        with control.alarm_at(time.monotonic() + 30):
            pass
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 60 - (time.monotonic() - set_at) - 1 < left <= 60  # set again, less the time spent
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved_handler)
        if saved_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *saved_timer)
