"""``benchmarks/edit_stages.py`` runs with the tiny model on CPU and reports every stage."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "edit_stages.py"

pytestmark = pytest.mark.benchmark


def test_the_stage_benchmark_reports_timings_and_memory(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("edit_stages", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "2", "--runs", "2", "--images", "2"]
    assert module.main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["stages"]) == {"prompt_encoding", "image_encoding", "denoising", "decoding", "total"}
    assert report["runs"] == 2 and report["output"] == "64x64"
    assert report["seconds_per_image"] > 0 and report["peak_rss_bytes"] > 0
    assert module.main(argv) == 0
    assert "seconds per image" in capsys.readouterr().out


def test_the_load_benchmark_checks_exactly_once_with_bad_inputs_mixed_in() -> None:
    import subprocess
    import sys

    script = SCRIPT.parent / "load.py"
    done = subprocess.run(
        [sys.executable, str(script), "--requests", "40", "--workers", "2", "--malformed", "0.25"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.count("exactly once: yes") == 2
    assert "'succeeded': 30" in done.stdout and "'failed': 10" in done.stdout


def test_the_preview_cost_benchmark_reports_both_step_times_and_the_ratio(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("preview_cost", SCRIPT.parent / "preview_cost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--model", str(tiny_model_dir), "--device", "cpu", "--steps", "3", "--runs", "1", "--size", "64"]
    report = module.main([*argv, "--json"])
    assert json.loads(capsys.readouterr().out) == report
    assert report["step_ms_without_previews"] > 0 and report["step_ms_with_previews"] > 0
    assert report["ratio"] == pytest.approx(
        report["step_ms_with_previews"] / report["step_ms_without_previews"], rel=0.01
    )
    assert report["previews_delivered_per_edit"] >= 1 and report["step_path_us_per_preview"] > 0
    module.main(argv)
    assert "ratio" in capsys.readouterr().out


def test_the_decode_bound_benchmark_reports_both_decodes_and_the_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = importlib.util.spec_from_file_location("decode_bound", SCRIPT.parent / "decode_bound.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--runs", "2", "--size", "64", "--skip-bombs", "--json"])
    assert json.loads(capsys.readouterr().out) == report
    for row in report["per_image"].values():
        assert row["in_process_ms"] > 0 and row["bounded_decode_ms"] > 0 and row["bounded_check_ms"] > 0
        assert row["decode_ratio"] == pytest.approx(row["bounded_decode_ms"] / row["in_process_ms"], rel=0.05)


def test_the_output_encoding_benchmark_measures_every_variant_against_level_6(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as `python benchmarks/x.py` has it: photos.py
    spec = importlib.util.spec_from_file_location("output_encoding", SCRIPT.parent / "output_encoding.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--size", "64", "--pictures", "1", "--rounds", "1", "--json"])
    assert json.loads(capsys.readouterr().out) == report
    variants = report["variants"]
    assert variants["png level 6"]["time_ratio"] == variants["png level 6"]["bytes_ratio"] == 1
    assert variants["png level 1"]["psnr_db"] == float("inf") and variants["jpeg q90"]["psnr_db"] < 60
    assert all(row["bytes"] > 0 and row["ms"] > 0 for row in variants.values())
