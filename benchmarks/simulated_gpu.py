"""The real diffusers pipeline on the tiny model, at the real model's sizes, with the GPU's work
simulated and clocked: what ``throughput.py`` and ``service_overhead.py`` run.

What is real: the worker, its queue, Storage and database calls, decode and encode, the pipeline's
resize and preprocessing of a 1024² input, the Qwen2-VL processor at the real 384² condition area,
the (tiny) text encoder, the scheduler, LoRA switching, the step callback, previews, and turning the
1 MP output tensor into a picture. What is simulated: the transformer's forward (a fixed number of
seconds per step) and the VAE (the tiny VAE takes 8 s to encode and 10–17 s to decode 1 MP on two
CPU cores, where the real one takes about 48 ms and 65 ms on an H100: LightX2V's measurements in
``ModelTC/LightX2V:examples/BeginnerGuide/EN/QwenImageVAETensorRT.md``, whose 153 ms decode includes
80–90 ms of CPU post-processing, which runs for real here). The simulated VAE carries the picture
through: its "latents" are the input averaged over 8×8 blocks, and its "decode" returns the input
picture, so the output is photo-like and costs what a photo costs to encode.

The clock ("GPU busy"): every call that would run on the GPU (the transformer's forward, the VAE's
encode and decode, the text encoder's forward, and the engine's ``to_pixels``: the decoded picture's NaN
check and its 8-bit conversion, done on the device since issue #21) appends ``start end kind`` (wall clock, seconds) to a
file per process, and holds a lock meanwhile: one lock file for all processes, so two worker
processes share one simulated GPU as two processes share one real one (their calls take turns).
``busy_seconds`` merges those intervals inside a window.

Worker processes: ``python benchmarks/simulated_gpu.py worker`` runs ``edit-processor worker`` with the
patches installed; ``SIMULATED_GPU`` (JSON of ``DeviceTimes`` plus ``log_dir`` and ``lock``) says how.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ENV = "SIMULATED_GPU"
FAST_STEPS = 8
"""The ``fast`` preset (Lightning 8 steps, no CFG): one transformer forward per step."""
VAE_ENCODE_SECONDS = 0.048
VAE_DECODE_SECONDS = 0.065


@dataclass(frozen=True)
class DeviceTimes:
    """Seconds of simulated device work: per transformer forward, per VAE encode and decode call."""

    forward: float
    vae_encode: float = VAE_ENCODE_SECONDS
    vae_decode: float = VAE_DECODE_SECONDS

    @classmethod
    def per_edit(cls, seconds: float, steps: int = FAST_STEPS) -> DeviceTimes:
        """``seconds`` of device work per edit of one input (VAE included; the real text encoder adds
        what it takes), spread over ``steps`` forwards."""
        forward = (seconds - VAE_ENCODE_SECONDS - VAE_DECODE_SECONDS) / steps
        if forward < 0:
            raise ValueError(f"{seconds} s per edit is less than the VAE's own time")
        return cls(forward=forward)


# --- the model folder ----------------------------------------------------------------------------------


def build_model(directory: Path) -> tuple[Path, Path]:
    """The tiny model at the real model's sizes (1024² VAE area, 384² condition area, 1 MP output, the
    real Qwen2-VL processor's pixel limits), and a tiny Lightning LoRA for ``fast``: (model, LoRA)."""
    from processor.adapters.diffusers.tiny_model import save_tiny_lora, save_tiny_model
    from processor.domain.sizing import SIZING_FILE, ModelSizing

    model = save_tiny_model(directory / "model")
    (model / SIZING_FILE).write_text(ModelSizing().to_json() + "\n")
    config_path = model / "processor" / "processor_config.json"
    config = json.loads(config_path.read_text())
    for part in ("image_processor", "video_processor"):
        if part in config:
            # Qwen2.5-VL's own limits (min_pixels 56², max_pixels 12845056), not the tiny model's 64².
            config[part]["size"] = {"shortest_edge": 3136, "longest_edge": 12845056}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    lora = save_tiny_lora(directory / "lightning-8step.safetensors", seed=8)
    return model, lora


# --- the clock -------------------------------------------------------------------------------------------


class DeviceClock:
    """Holds the simulated GPU during a call and records the interval (see the module docstring)."""

    def __init__(self, log_dir: Path | None, lock_path: Path | None) -> None:
        self._thread_lock = threading.Lock()
        self._lock_file = open(lock_path, "a+b") if lock_path else None  # noqa: SIM115 - lives with the process
        self._log = (
            open(log_dir / f"device-{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115
            if log_dir
            else None
        )
        self.intervals: list[tuple[float, float, str]] = []

    @contextmanager
    def held(self, kind: str) -> Any:
        import fcntl

        with self._thread_lock:
            if self._lock_file is not None:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                started = time.time()
                yield
                ended = time.time()
            finally:
                if self._lock_file is not None:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self.intervals.append((started, ended, kind))
            if self._log is not None:
                self._log.write(f"{started:.6f} {ended:.6f} {kind}\n")


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)


def install(times: DeviceTimes, clock: DeviceClock) -> None:
    """Patch the classes (every instance, however the engine builds it): simulated transformer and VAE,
    clocked text encoder."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    last_input: dict[str, torch.Tensor] = {}

    def transformer_forward(_self: Any, hidden_states: torch.Tensor, *_args: Any, **kwargs: Any) -> Any:
        with clock.held("transformer"):
            deadline = time.perf_counter() + times.forward
            # A velocity of the right shape, finite and not zero (true CFG rescales by its norm); the
            # picture does not depend on it (the simulated decode returns the input).
            out = torch.full_like(hidden_states, 1e-3)
            _sleep_until(deadline)
        if kwargs.get("return_dict", True):
            return SimpleNamespace(sample=out)
        return (out,)

    def vae_encode(self: Any, x: torch.Tensor, return_dict: bool = True) -> Any:
        with clock.held("vae_encode"):
            deadline = time.perf_counter() + times.vae_encode
            last_input["pixels"] = x
            pooled = F.avg_pool3d(x.float(), kernel_size=(1, 8, 8)).to(x.dtype)
            z_dim = int(self.config.z_dim)
            latents = pooled.repeat(1, -(-z_dim // pooled.shape[1]), 1, 1, 1)[:, :z_dim]
            _sleep_until(deadline)
        dist = SimpleNamespace(mode=lambda: latents, sample=lambda generator=None: latents)
        encoded = SimpleNamespace(latent_dist=dist)
        return encoded if return_dict else (dist,)

    def vae_decode(_self: Any, z: torch.Tensor, return_dict: bool = True) -> Any:
        with clock.held("vae_decode"):
            deadline = time.perf_counter() + times.vae_decode
            batch, _, frames, height, width = z.shape
            size = (height * 8, width * 8)
            pixels = last_input.get("pixels")
            if pixels is None:
                image = torch.zeros((batch, 3, frames, *size), dtype=z.dtype, device=z.device)
            elif tuple(pixels.shape[-2:]) == size:
                image = pixels[:batch, :, :frames]
            else:
                image = F.interpolate(pixels[:batch, :, 0].float(), size=size, mode="bilinear")
                image = image.unsqueeze(2).to(z.dtype)
            _sleep_until(deadline)
        return SimpleNamespace(sample=image) if return_dict else (image,)

    text_forward = Qwen2_5_VLForConditionalGeneration.forward

    def text_encoder_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        with clock.held("text_encoder"):
            return text_forward(self, *args, **kwargs)

    QwenImageTransformer2DModel.forward = transformer_forward
    AutoencoderKLQwenImage.encode = vae_encode
    AutoencoderKLQwenImage.decode = vae_decode
    Qwen2_5_VLForConditionalGeneration.forward = text_encoder_forward

    # The decoded picture's NaN check and its conversion to 8-bit pixels run on the device (a few kernels
    # and a 3 MB copy): clocked as device work, as the text encoder is, for what they take on this CPU.
    # An engine without it (before issue #21) converts on the CPU after the device is done: not clocked.
    from processor.adapters.diffusers import engine

    if hasattr(engine, "to_pixels"):
        pixels = engine.to_pixels

        def to_pixels(*args: Any, **kwargs: Any) -> Any:
            with clock.held("to_pixels"):
                return pixels(*args, **kwargs)

        engine.to_pixels = to_pixels


# --- reading the clock -------------------------------------------------------------------------------------


def read_intervals(log_dir: Path) -> list[tuple[float, float, str]]:
    intervals = []
    for path in sorted(log_dir.glob("device-*.log")):
        for line in path.read_text().splitlines():
            started, ended, kind = line.split()
            intervals.append((float(started), float(ended), kind))
    return sorted(intervals)


def busy_seconds(intervals: Iterable[tuple[float, float, str]], start: float, end: float) -> float:
    """The time inside [start, end] during which at least one device call ran (their union)."""
    busy, covered_to = 0.0, start
    for began, ended, _ in sorted(intervals):
        began, ended = max(began, covered_to), min(ended, end)
        if ended > began:
            busy += ended - began
            covered_to = ended
    return busy


def idle_by_next_call(
    intervals: Iterable[tuple[float, float, str]], start: float, end: float
) -> dict[str, float]:
    """The idle time inside [start, end], by what ended it: ``between edits`` (the next call is an
    edit's first, its text encoder), ``between steps`` (a transformer forward after one), ``before
    decode`` (the VAE decode), ``other`` (the rest: text encoder to VAE encode, VAE encode to the first
    forward). Where the GPU waits, and so what to fix."""
    idle = {"between edits": 0.0, "between steps": 0.0, "before decode": 0.0, "other": 0.0}
    covered_to, previous = start, ""
    for began, ended, kind in sorted(intervals):
        if ended <= start or began >= end:
            if began < start:
                previous = kind
            continue
        gap = max(0.0, min(began, end) - covered_to)
        if gap > 0:
            if kind == "text_encoder":
                idle["between edits"] += gap
            elif kind == "transformer" and previous == "transformer":
                idle["between steps"] += gap
            elif kind == "vae_decode":
                idle["before decode"] += gap
            else:
                idle["other"] += gap
        covered_to, previous = max(covered_to, min(ended, end)), kind
    idle["other"] += max(0.0, end - covered_to)
    return idle


# --- a worker process ----------------------------------------------------------------------------------------


def install_from_environment() -> DeviceClock:
    import torch

    spec = json.loads(os.environ[ENV])
    # The real text encoder and the tensor work run on this CPU: one thread each, so that two worker
    # processes, PostgreSQL and Storage share two cores without oversubscription.
    torch.set_num_threads(int(spec.get("torch_threads", 1)))
    clock = DeviceClock(
        Path(spec["log_dir"]) if spec.get("log_dir") else None,
        Path(spec["lock"]) if spec.get("lock") else None,
    )
    install(DeviceTimes(**{k: spec[k] for k in asdict(DeviceTimes(0.0))}), clock)
    return clock


def environment(times: DeviceTimes, log_dir: Path, lock: Path, torch_threads: int = 1) -> dict[str, str]:
    return {
        ENV: json.dumps(
            {**asdict(times), "log_dir": str(log_dir), "lock": str(lock), "torch_threads": torch_threads}
        )
    }


def run_worker(main: Callable[[], Any] | None = None) -> None:
    """``edit-processor worker`` (its settings from the environment) on the simulated GPU."""
    install_from_environment()
    from processor.cli import main as cli_main

    sys.argv = ["edit-processor", "worker"]
    (main or cli_main)()


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        run_worker()
    else:
        sys.stderr.write("usage: python benchmarks/simulated_gpu.py worker  (with SIMULATED_GPU set)\n")
        raise SystemExit(2)
