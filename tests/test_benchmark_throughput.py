"""The throughput and service-overhead benchmarks: their GPU clock, and a smoke run of each.

The smoke runs check what the figures are made of (every job succeeded, the clock's parts add up,
every stage was measured), never how fast this machine is.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_spec = importlib.util.spec_from_file_location("benchmarks_simulated_gpu", BENCHMARKS / "simulated_gpu.py")
assert _spec is not None and _spec.loader is not None
simulated_gpu = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = simulated_gpu  # dataclasses look their module up
_spec.loader.exec_module(simulated_gpu)

pytestmark = pytest.mark.benchmark


def test_gpu_busy_is_the_union_of_device_calls_inside_the_window() -> None:
    calls = [
        (0.0, 2.0, "transformer"),  # starts before the window
        (3.0, 4.0, "vae_decode"),
        (3.5, 5.0, "transformer"),  # overlaps the previous call (two processes): counted once
        (9.0, 12.0, "text_encoder"),  # ends after the window
        (20.0, 21.0, "transformer"),  # outside
    ]
    assert simulated_gpu.busy_seconds(calls, 1.0, 10.0) == pytest.approx(1.0 + 2.0 + 1.0)
    assert simulated_gpu.busy_seconds([], 0.0, 5.0) == 0.0


def test_seconds_per_edit_are_spread_over_the_steps_after_the_vae() -> None:
    times = simulated_gpu.DeviceTimes.per_edit(3.0)
    assert times.forward * simulated_gpu.FAST_STEPS + times.vae_encode + times.vae_decode == pytest.approx(
        3.0
    )
    with pytest.raises(ValueError):
        simulated_gpu.DeviceTimes.per_edit(0.05)


def test_the_throughput_benchmark_quick_run_measures_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "throughput.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    cells = report["cells"]
    assert [c["latency_ms"] for c in cells] == [0.0, 20.0]
    for cell in cells:
        assert cell["failed"] == [] and cell["jobs"] == report["jobs_per_cell"]
        assert 0 < cell["gpu_busy"] <= 1
        # The clock's parts add up: busy + idle is the window.
        busy = cell["gpu_busy"] * cell["window_seconds"]
        assert busy + cell["idle_ms_per_job"] * cell["jobs"] / 1000 == pytest.approx(cell["window_seconds"])
        # At least the simulated seconds of each edit were spent on the device (sleeps are never short).
        assert cell["device_seconds_per_edit"] >= 0.95 * cell["gpu_seconds_per_edit"]
        assert cell["claim_to_succeeded_p50"] <= cell["insert_to_succeeded_p50"]
    assert "GPU busy" in done.stdout


def test_the_service_overhead_benchmark_measures_every_stage_for_png_and_jpeg(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "service_overhead.py"),
            "--sequential",
            "1",
            "--burst",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    for fmt in ("png", "jpeg"):
        stages = report["sequential"][fmt]
        for stage in (
            "download",
            "decode",
            "preprocess (engine, before its lock)",
            "encode (the worker's PNG)",
            "upload",
        ):
            assert stages[stage]["median"] > 0, (fmt, stage)
        for call in ("DB claim", "DB complete"):
            assert stages[call]["median"] > 0, (fmt, call)
    assert report["burst"]["succeeded"] == 2
    assert all(entry["bytes_median"] > 0 for entry in report["encode"].values())
