"""Checks that take seconds, before minutes of building 54 GiB on the device.

``problems`` stop the run (no number would come out of it): a CPU build of torch, no driver or one
too old for torch's CUDA, no device, too little free device memory for the plan, peft missing, the
hub reachable in principle (a download attempt on a machine without network hangs, it does not fail).
``unavailable`` features only drop the variants that need them, each with its reason in the output:
FP8 (CUDA ≥ 8.9, torchao, a float8 matmul that runs, host memory for the bf16 copy), the attention
backend (a call through diffusers' dispatcher), compile (a tiny ``torch.compile`` with the same
backend: a missing C compiler or Python headers fail here, not after the first minute of a variant).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import shutil
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from processor.adapters.diffusers.accelerate import Accelerations, check_accelerations, check_fp8
from processor.domain.errors import ConfigurationError

GIB = 2**30
PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "torchao",
    "accelerate",
    "triton",
    "huggingface-hub",
)


@dataclass
class Preflight:
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    """Feature (``fp8``, ``attention``, ``compile``) -> why it cannot run here."""

    def line(self, seconds: float) -> dict[str, Any]:
        return {
            "event": "preflight",
            "ok": not self.problems,
            "seconds": round(seconds, 2),
            "problems": self.problems,
            "unavailable": self.unavailable,
            **self.facts,
        }


def run_preflight(
    device: torch.device,
    *,
    attention: str,
    compile_backend: str,
    need_bytes: int,
    fp8_host_bytes: int,
    smoke: bool = True,
) -> tuple[Preflight, float]:
    """``device`` ``meta`` (the dry run) checks the software only."""
    started = time.perf_counter()
    check = Preflight()
    check.facts["versions"] = versions()
    software(check)
    if device.type == "cuda":
        cuda(check, device, need_bytes)
    if not check.problems:
        fp8(check, device, fp8_host_bytes, smoke=smoke)
        attention_backend(check, device, attention, smoke=smoke)
        if smoke and device.type != "meta":
            compiler(check, device, compile_backend)
    return check, time.perf_counter() - started


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    found["torch_cuda"] = torch.version.cuda
    cudnn = torch.backends.cudnn
    found["cudnn"] = str(cudnn.version()) if cudnn.is_available() else None  # type: ignore[no-untyped-call]
    return found


def software(check: Preflight) -> None:
    from huggingface_hub import constants

    check.facts["hf_hub_offline"] = bool(constants.HF_HUB_OFFLINE)
    if not constants.HF_HUB_OFFLINE:
        check.problems.append("HF_HUB_OFFLINE is not set: nothing is downloaded, and a hub call would hang")
    if check.facts["versions"]["peft"] is None:
        check.problems.append("peft is not installed: the Lightning LoRAs cannot load (pip install peft)")


def driver_cuda_version() -> str | None:
    """The CUDA version the installed NVIDIA driver supports (``cuDriverGetVersion``), or None."""
    try:
        library = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if library.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def _major_minor(text: str) -> tuple[int, int]:
    major, minor = [*text.split("."), "0"][:2]
    return int(major), int(minor)


def cuda(check: Preflight, device: torch.device, need_bytes: int) -> None:
    built = torch.version.cuda
    driver = driver_cuda_version()
    check.facts["driver_cuda"] = driver
    if built is None:
        check.problems.append(f"torch {torch.__version__} is a CPU build: install a CUDA build")
        return
    if driver is None:
        check.problems.append("no NVIDIA driver found (libcuda.so.1 does not load)")
        return
    if _major_minor(driver)[0] < _major_minor(built)[0]:
        check.problems.append(f"the driver supports CUDA {driver}; torch is built for CUDA {built}")
        return
    if _major_minor(driver) < _major_minor(built):
        check.facts["driver_note"] = f"driver CUDA {driver} < torch's {built}: minor-version compatibility"
    if not torch.cuda.is_available():
        check.problems.append(f"torch sees no CUDA device (driver CUDA {driver}, torch CUDA {built})")
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    capability = torch.cuda.get_device_capability(index)
    check.facts["device"] = {
        "name": torch.cuda.get_device_name(index),
        "capability": f"{capability[0]}.{capability[1]}",
        "memory_gib": round(total / GIB, 2),
        "free_gib": round(free / GIB, 2),
    }
    if free < need_bytes:
        check.problems.append(
            f"{free / GIB:.1f} GiB free on the device; the plan needs about {need_bytes / GIB:.1f} GiB"
        )


def fp8(check: Preflight, device: torch.device, host_bytes: int, *, smoke: bool) -> None:
    """The engine's own FP8 check, then one float8 linear through torchao on the device."""
    if device.type == "meta":
        return
    try:
        check_fp8(device)
    except ConfigurationError as exc:
        check.unavailable["fp8"] = str(exc)
        return
    available = host_memory_available()
    if available is not None and available < host_bytes * 1.1:
        check.unavailable["fp8"] = (
            f"the bf16 copy of the FP8 layers needs {host_bytes / GIB:.1f} GiB of host memory; "
            f"{available / GIB:.1f} GiB available"
        )
        return
    if not smoke:
        return
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        linear = torch.nn.Linear(256, 256, bias=False, device=device, dtype=torch.bfloat16)
        sample = torch.randn(32, 256, device=device, dtype=torch.bfloat16)
        with torch.inference_mode():
            expected = linear(sample)
            quantize_(linear, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
            error = float((linear(sample) - expected).abs().mean() / expected.abs().mean())
    except Exception as exc:
        check.unavailable["fp8"] = f"a float8 linear failed: {type(exc).__name__}: {exc}"[:500]
        return
    check.facts["fp8_smoke_relative_error"] = round(error, 4)
    if not error < 0.1:
        check.unavailable["fp8"] = f"a float8 linear is {error:.3f} off its bf16 output"


def host_memory_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def attention_backend(check: Preflight, device: torch.device, backend: str, *, smoke: bool) -> None:
    target = torch.device("cuda") if device.type == "meta" else device
    try:
        check_accelerations(Accelerations(attention_backend=backend), target)
    except ConfigurationError as exc:
        check.unavailable["attention"] = str(exc)
        return
    if not smoke or device.type == "meta":
        return
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    query = torch.randn(1, 128, 2, 64, device=device, dtype=dtype)  # batch, sequence, heads, head dim
    try:
        with torch.inference_mode():
            dispatch_attention_fn(query, query, query, backend=AttentionBackendName(backend))
    except Exception as exc:
        check.unavailable["attention"] = f"{backend}: {type(exc).__name__}: {exc}"[:500]


def compiler(check: Preflight, device: torch.device, backend: str) -> None:
    """A tiny dynamic-shape ``torch.compile`` on the device with the benchmark's backend."""
    if backend == "inductor":
        missing = []
        if not any(shutil.which(name) for name in ("cc", "gcc", "clang")):
            missing.append("a C compiler (cc/gcc/clang)")
        if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
            missing.append("Python.h (python3-dev)")
        if missing:
            check.unavailable["compile"] = "inductor needs " + " and ".join(missing)
            return
        free = shutil.disk_usage(tempfile.gettempdir()).free
        check.facts["temp_disk_free_gib"] = round(free / GIB, 1)
    started = time.perf_counter()
    try:
        function = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2 + 1, backend=backend, dynamic=True)
        with torch.inference_mode():
            function(torch.randn(64, device=device))
    except Exception as exc:
        check.unavailable["compile"] = f"torch.compile({backend}) failed: {type(exc).__name__}: {exc}"[:500]
        return
    check.facts["compile_smoke_seconds"] = round(time.perf_counter() - started, 2)
    check.facts["inductor_cache"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default")
