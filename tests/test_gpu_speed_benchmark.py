"""``benchmarks/gpu_speed.py`` runs end to end on CPU with the tiny model (compile is covered by
``test_compile_and_attention.py``; FP8 reports itself unavailable here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_speed.py"


def test_the_gpu_benchmark_runs_every_variant_it_can_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("gpu_speed", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_speed"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    argv = ["--tiny", "--device", "cpu", "--skip", "compile", "--runs", "3", "--budget-seconds", "600"]
    # (with compile as well it also runs on CPU, in about 3 minutes more: see docs/speed.md)
    assert module.main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    results = {result["name"]: result for result in report["results"]}
    assert list(results) == [
        "stock diffusers",
        "engine quality",
        "engine fast",
        "engine fastest",
        "quality +step_cache",
    ]
    # Transformer forwards per image: 40 steps with true CFG, then one per Lightning step.
    assert results["stock diffusers"]["forwards"] == results["engine quality"]["forwards"] == 80
    assert results["engine fast"]["forwards"] == 8 and results["engine fastest"]["forwards"] == 4
    for result in results.values():
        assert result["seconds_per_image"] > 0 and result["speedup"] > 0
        assert result["sequence"]["image_tokens"] > 0 and result["denoising_tflop"] > 0
        assert set(result["stages"]) >= {"denoising", "total"}
    assert results["quality +step_cache"]["latent_error"] is not None
    skipped = {item["name"]: item["why"] for item in report["skipped"]}
    assert "FP8=true needs a CUDA GPU" in skipped["quality +fp8"]
    assert skipped["quality +compile +attn"] == "--skip"
