"""One GPU run: stock diffusers against the engine in each speed preset and acceleration.

    PYTHONPATH=. python benchmarks/gpu_speed.py                 # on a GPU: full-size, random bf16 weights
    PYTHONPATH=. python benchmarks/gpu_speed.py --tiny --device cpu --skip compile   # the CPU check

Full size: the Qwen-Image-Edit-2509 architecture (60-block 20B transformer, Qwen2.5-VL-7B
text/vision encoder, the Qwen-Image VAE) with random bfloat16 weights built directly on the GPU:
nothing is downloaded (``--zero-cond-t`` gives 2511's transformer). The Lightning LoRAs are random
rank-64 LoRAs in the published key layout, written to a temporary file and loaded through the
engine's own ``load_lora_weights`` path. One 1024² input, a ≈1 MP (1024²) output.

In one process, on one set of weights, in this order (later variants reuse earlier compiles):

1. ``stock``: ``QwenImageEditPlusPipeline.__call__`` as the model card calls it (40 steps,
   ``true_cfg_scale=4.0``, ``negative_prompt=" "``, PIL output): the baseline;
2. the engine, eager: ``quality``, ``fast``, ``fastest``;
3. the engine with ``COMPILE`` + ``ATTENTION_BACKEND`` (lossless): ``quality``, ``fast``, ``fastest``;
4. lossy: ``quality`` + ``STEP_CACHE``; ``quality`` and ``fastest`` + ``FP8`` (FP8 last: it changes
   the weights for good). Their error is the mean absolute difference of the final latents
   (what the VAE decodes) from the same preset's eager engine run, same seed.

Per variant: seconds per image (median of ``--runs`` ≥ 3 after one warm-up edit of the same
shapes at 2 steps), seconds per step, stage times, peak CUDA memory, achieved TFLOP/s over the
denoising loop, and the fraction of the compute floor (the run's transformer FLOPs at
``--peak-tflops``, 800 by default); then ratios against the baseline. FLOPs per forward:
24·d²·L per token (attention projections and MLPs of both streams) plus 4·s²·d·L attention,
with the sequence lengths the transformer really saw.

GPU time is scarce: ``--budget-seconds`` (default 450, inside the 8 minutes) stops starting
variants whose estimated cost (from the baseline's per-forward time) would overrun it; they
print as skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from processor.adapters.diffusers.accelerate import Accelerations, check_fp8, compile_counters
from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.loras import LoraSource
from processor.domain.errors import ConfigurationError, ProcessorError
from processor.domain.request import EditParams
from processor.domain.sizing import ModelSizing

PROMPT = "Replace the background with a sunny beach and keep the subject unchanged."


@dataclass
class Variant:
    name: str
    speed: str = "quality"
    accelerations: Accelerations = field(default_factory=Accelerations)
    reference: str | None = None
    """Eager variant whose latents this lossy one is compared with."""

    @property
    def steps(self) -> int:
        return {"quality": 40, "fast": 8, "fastest": 4}[self.speed]

    @property
    def forwards(self) -> int:
        return self.steps * (2 if self.speed == "quality" else 1)


def variants(attention: str) -> list[Variant]:
    lossless = Accelerations(compile=True, attention_backend=attention)
    return [
        Variant("engine quality"),
        Variant("engine fast", "fast"),
        Variant("engine fastest", "fastest"),
        Variant("quality +compile +attn", "quality", lossless),
        Variant("fast +compile +attn", "fast", lossless),
        Variant("fastest +compile +attn", "fastest", lossless),
        Variant(
            "quality +step_cache",
            "quality",
            Accelerations(compile=True, attention_backend=attention, step_cache=True),
            "engine quality",
        ),
        Variant(
            "quality +fp8",
            "quality",
            Accelerations(compile=True, attention_backend=attention, fp8=True),
            "engine quality",
        ),
        Variant(
            "fastest +fp8",
            "fastest",
            Accelerations(compile=True, attention_backend=attention, fp8=True),
            "engine fastest",
        ),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny random model (CPU check of this script)"
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--zero-cond-t", action="store_true", help="2511's transformer config")
    parser.add_argument("--runs", type=int, default=3, help="timed edits per variant (median; default 3)")
    parser.add_argument(
        "--attention",
        help="ATTENTION_BACKEND of the lossless variants (default _native_cudnn on CUDA, native on CPU)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=800.0, help="achievable bf16 TFLOP/s of the floor"
    )
    parser.add_argument("--budget-seconds", type=float, default=450.0)
    parser.add_argument("--skip", action="append", default=[], help="skip variants containing this word")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


# --- Building the model ---------------------------------------------------------------------------


def full_size_components(device: torch.device, zero_cond_t: bool) -> dict[str, Any]:
    """Qwen-Image-Edit-2509's components at full size, random bf16 weights, built on ``device``."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    from processor.adapters.diffusers.tiny_model import (
        QWEN_IMAGE_SCHEDULER_CONFIG,
        QWEN_SPECIAL_TOKENS,
        _build_processor,
    )

    tiny = _build_processor()  # the byte-level tokenizer with Qwen's special tokens (offline)
    tokenizer = tiny.tokenizer
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    processor = type(tiny)(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer, **_video(tiny))
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    with _building(device):
        text_encoder = Qwen2_5_VLForConditionalGeneration(config)
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=60,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=3584,
            guidance_embeds=False,
            axes_dims_rope=(16, 56, 56),
            zero_cond_t=zero_cond_t,
        )
        vae = AutoencoderKLQwenImage()
    for module in (text_encoder, transformer, vae):
        module.eval()
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "processor": processor,
        "transformer": transformer,
    }


def _video(tiny: Any) -> dict[str, Any]:
    video = getattr(tiny, "video_processor", None)
    if video is None:
        return {}
    from transformers import Qwen2VLVideoProcessor

    return {"video_processor": Qwen2VLVideoProcessor()}


@contextmanager
def _building(device: torch.device) -> Iterator[None]:
    """Modules created inside are allocated on ``device`` in bfloat16, randomly initialised there."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            yield
    finally:
        torch.set_default_dtype(previous)


def tiny_components() -> dict[str, Any]:
    from processor.adapters.diffusers.tiny_model import build_tiny_pipeline

    return dict(build_tiny_pipeline().components)


def write_lightning(folder: Path, tiny: bool, device: torch.device) -> dict[str, LoraSource]:
    """Random Lightning-layout LoRAs (rank 64, alpha 8 at full size) as safetensors files."""
    from safetensors.torch import save_file

    from processor.adapters.diffusers.tiny_model import LIGHTNING_LORA_MODULES, tiny_lora_state_dict

    sources = {}
    for preset, seed in (("fast", 8), ("fastest", 4)):
        path = folder / f"random-{preset}.safetensors"
        if tiny:
            tensors = tiny_lora_state_dict(seed=seed)
        else:
            tensors = {}
            generator = torch.Generator(device).manual_seed(seed)
            dim, rank = 3072, 64
            shapes = dict.fromkeys(LIGHTNING_LORA_MODULES, (dim, dim))
            for stream in ("img", "txt"):
                shapes[f"{stream}_mlp.net.0.proj"] = (dim, 4 * dim)
                shapes[f"{stream}_mlp.net.2"] = (4 * dim, dim)
                shapes[f"{stream}_mod.1"] = (dim, 6 * dim)
            for block in range(60):
                for module, (fan_in, fan_out) in shapes.items():
                    key = f"transformer_blocks.{block}.{module}"
                    down = torch.randn(rank, fan_in, generator=generator, device=device) * fan_in**-0.5
                    up = torch.randn(fan_out, rank, generator=generator, device=device) * 1e-3
                    tensors[f"{key}.lora_down.weight"] = down.to(torch.bfloat16).cpu()
                    tensors[f"{key}.lora_up.weight"] = up.to(torch.bfloat16).cpu()
                    tensors[f"{key}.alpha"] = torch.tensor(8.0)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        sources[preset] = LoraSource.parse(str(path))
    return sources


# --- Measuring --------------------------------------------------------------------------------------


class Probe:
    """Sequence lengths the transformer sees, when denoising starts and ends, and the final latents."""

    def __init__(self, pipeline: Any, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.sequence: tuple[int, int] = (0, 0)
        self.forwards = 0
        self.first_forward: float | None = None
        self.latents: torch.Tensor | None = None
        transformer = pipeline.transformer
        self._handles = [transformer.register_forward_pre_hook(self._pre, with_kwargs=True)]
        vae = pipeline.vae
        self._vae, self._decode = vae, vae.decode

        def decode(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.latents = z.detach().float().cpu()
            return self._decode(z, *args, **kwargs)

        vae.decode = decode

    def _pre(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.first_forward is None:
            self.sync()
            self.first_forward = time.perf_counter()
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states")
        if hidden is not None and text is not None:
            self.sequence = (int(hidden.shape[1]), int(text.shape[1]))
        self.forwards += 1

    def reset(self) -> None:
        self.forwards, self.first_forward, self.latents = 0, None, None

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._vae.decode = self._decode


def forward_flop(transformer: Any, image_tokens: int, text_tokens: int) -> float:
    config = transformer.config
    dim = config.num_attention_heads * config.attention_head_dim
    layers = config.num_layers
    tokens = image_tokens + text_tokens
    return 24.0 * dim * dim * layers * tokens + 4.0 * tokens * tokens * dim * layers


def summarise(samples: list[dict[str, float]]) -> dict[str, float]:
    return {stage: statistics.median(sample[stage] for sample in samples) for stage in samples[0]}


def peak_memory(cuda: bool) -> int | None:
    return int(torch.cuda.max_memory_allocated()) if cuda else None


def run_stock(
    components: dict[str, Any], image: Image.Image, args: argparse.Namespace, cuda: bool
) -> dict[str, Any]:
    """The model card's call on a plain ``QwenImageEditPlusPipeline`` (the tiny model gets an explicit
    64² output, the engine's tiny sizing; full size leaves the pipeline's own ≈1 MP choice)."""
    size = {"height": 64, "width": 64} if args.tiny else {}
    from diffusers import QwenImageEditPlusPipeline

    pipeline = QwenImageEditPlusPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    probe = Probe(pipeline, sync)
    device = "cuda" if cuda else "cpu"

    def call(steps: int) -> dict[str, float]:
        probe.reset()
        ends: list[float] = []

        def on_step(_pipe: Any, _index: int, _t: Any, _tensors: dict[str, Any]) -> dict[str, Any]:
            sync()
            ends.append(time.perf_counter())
            return {}

        sync()
        started = time.perf_counter()
        pipeline(
            image=[image],
            prompt=PROMPT,
            negative_prompt=" ",
            true_cfg_scale=4.0,
            num_inference_steps=steps,
            generator=torch.Generator(device).manual_seed(0),
            callback_on_step_end=on_step,
            **size,
        ).images[0]
        sync()
        finished = time.perf_counter()
        assert probe.first_forward is not None
        return {
            "before_denoising": probe.first_forward - started,
            "denoising": ends[-1] - probe.first_forward,
            "after_denoising": finished - ends[-1],
            "total": finished - started,
        }

    call(2)  # warm-up, same shapes
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    samples = [call(40) for _ in range(args.runs)]
    report = {"name": "stock diffusers", "speed": "quality", "steps": 40, "forwards": probe.forwards}
    report.update(_figures(samples, probe, pipeline.transformer, 40, args, cuda))
    probe.close()
    return report


def run_engine(
    editor: DiffusersEditor, variant: Variant, image: Image.Image, args: argparse.Namespace, cuda: bool
) -> dict[str, Any]:
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    probe = Probe(editor.pipeline, sync)
    params = EditParams(prompt=PROMPT, seed=0, speed=variant.speed)  # type: ignore[arg-type]
    counters_before = compile_counters()
    started = time.perf_counter()
    editor.edit([image], EditParams(prompt=PROMPT, seed=0, speed=variant.speed, num_inference_steps=2))  # type: ignore[arg-type]
    warm_up_seconds = time.perf_counter() - started
    counters_warm = compile_counters()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    samples = []
    for _ in range(args.runs):
        probe.reset()
        samples.append(dict(editor.edit([image], params).timings))
    counters_after = compile_counters()
    report: dict[str, Any] = {
        "name": variant.name,
        "speed": variant.speed,
        "steps": variant.steps,
        "forwards": probe.forwards,
        "accelerations": variant.accelerations.describe(),
        "warm_up_seconds": warm_up_seconds,
        "compiled_frames_in_warm_up": counters_warm["frames"] - counters_before["frames"],
        "recompiles_in_timed_runs": counters_after["frames"] - counters_warm["frames"],
    }
    report.update(_figures(samples, probe, editor.pipeline.transformer, variant.steps, args, cuda))
    probe.close()
    return report


def _figures(
    samples: list[dict[str, float]],
    probe: Probe,
    transformer: Any,
    steps: int,
    args: argparse.Namespace,
    cuda: bool,
) -> dict[str, Any]:
    stages = summarise(samples)
    image_tokens, text_tokens = probe.sequence
    flop = forward_flop(transformer, image_tokens, text_tokens) * probe.forwards
    floor = flop / (args.peak_tflops * 1e12)
    return {
        "stages": stages,
        "seconds_per_image": stages["total"],
        "seconds_per_step": stages["denoising"] / steps,
        "sequence": {"image_tokens": image_tokens, "text_tokens": text_tokens},
        "denoising_tflop": flop / 1e12,
        "achieved_tflops": flop / stages["denoising"] / 1e12 if stages["denoising"] else 0.0,
        "floor_seconds": floor,
        "fraction_of_floor": floor / stages["denoising"] if stages["denoising"] else 0.0,
        "peak_allocated_bytes": peak_memory(cuda),
        "latents": probe.latents,
    }


def latent_error(latents: torch.Tensor | None, reference: torch.Tensor | None) -> float | None:
    if latents is None or reference is None:
        return None
    return float((latents - reference).abs().mean() / reference.abs().mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.attention = args.attention or ("_native_cudnn" if cuda else "native")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny --device cpu to check the script")
    started = time.perf_counter()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="gpu-speed-") as scratch:
        if args.tiny:
            from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

            from processor.adapters.diffusers.tiny_model import TINY_SIZING

            components, sizing = tiny_components(), TINY_SIZING
            plus.VAE_IMAGE_SIZE, plus.CONDITION_IMAGE_SIZE = (
                TINY_SIZING.vae_image_area,
                TINY_SIZING.condition_image_area,
            )
            image = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
        else:
            components, sizing = full_size_components(device, args.zero_cond_t), ModelSizing()
            image = Image.linear_gradient("L").resize((1024, 1024)).convert("RGB")
        for name in ("text_encoder", "transformer", "vae"):
            components[name].to(device)
        build_seconds = time.perf_counter() - started
        results = [run_stock(components, image, args, cuda)]
        lightning = write_lightning(Path(scratch), args.tiny, device)
        skipped = run_variants(results, components, sizing, lightning, image, args, device, started)
    baseline = results[0]
    for report in results:
        report["speedup"] = baseline["seconds_per_image"] / report["seconds_per_image"]
        report.pop("latents", None)
    summary = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "model": "tiny"
        if args.tiny
        else ("2511-shaped" if args.zero_cond_t else "2509-shaped") + " random bf16",
        "input": f"{image.width}x{image.height}",
        "build_seconds": build_seconds,
        "wall_seconds": time.perf_counter() - started,
        "runs": args.runs,
        "peak_tflops_for_floor": args.peak_tflops,
        "results": results,
        "skipped": skipped,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0


def run_variants(
    results: list[dict[str, Any]],
    components: dict[str, Any],
    sizing: ModelSizing,
    lightning: dict[str, LoraSource],
    image: Image.Image,
    args: argparse.Namespace,
    device: torch.device,
    started: float,
) -> list[dict[str, str]]:
    """Run the engine variants in order within the budget; append to ``results``; return the skipped."""
    cuda = device.type == "cuda"
    baseline = results[0]
    per_forward = baseline["stages"]["denoising"] / 80  # the stock run: 40 steps x 2 forwards
    fixed = baseline["seconds_per_image"] - baseline["stages"]["denoising"]
    skipped: list[dict[str, str]] = []
    references: dict[str, torch.Tensor | None] = {}
    for variant in variants(args.attention):
        if any(word in variant.name for word in args.skip):
            skipped.append({"name": variant.name, "why": "--skip"})
            continue
        if "compile" in args.skip and variant.accelerations.compile:
            variant.accelerations = replace(variant.accelerations, compile=False)
        estimate = (args.runs + 0.2) * (variant.forwards * per_forward + fixed)
        if variant.accelerations.compile and not any(
            r.get("accelerations", {}).get("compile") for r in results[1:]
        ):
            estimate += 90.0  # first compile of the block (est.)
        elapsed = time.perf_counter() - started
        if elapsed + estimate > args.budget_seconds:
            skipped.append({"name": variant.name, "why": f"budget: {elapsed:.0f} s + ~{estimate:.0f} s"})
            continue
        try:
            if variant.accelerations.fp8:
                check_fp8(device)
            editor = DiffusersEditor.from_components(
                components,
                model_id="random-full-size" if not args.tiny else "tiny",
                sizing=sizing,
                lightning=lightning,  # type: ignore[arg-type]
                accelerations=variant.accelerations,
            )
        except ConfigurationError as exc:
            skipped.append({"name": variant.name, "why": str(exc)})
            continue
        try:
            report = run_engine(editor, variant, image, args, cuda)
        except ProcessorError as exc:
            skipped.append({"name": variant.name, "why": f"failed: {exc}"})
            continue
        references[variant.name] = report["latents"]
        if variant.reference is not None:
            report["latent_error"] = latent_error(report["latents"], references.get(variant.reference))
        results.append(report)
    return skipped


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"{summary['model']} on {summary['device']}, input {summary['input']}, median of {summary['runs']}, "
        f"floor at {summary['peak_tflops_for_floor']:.0f} TFLOP/s, wall {summary['wall_seconds']:.0f} s"
    )
    header = f"{'variant':<26}{'s/image':>9}{'s/step':>9}{'×stock':>8}{'TFLOP/s':>9}{'floor':>7}{'peak GiB':>9}{'lat.err':>9}{'recomp':>7}"
    print(header)
    for r in summary["results"]:
        peak = r["peak_allocated_bytes"]
        error = r.get("latent_error")
        print(
            f"{r['name']:<26}{r['seconds_per_image']:>9.3f}{r['seconds_per_step']:>9.4f}{r['speedup']:>8.2f}"
            f"{r['achieved_tflops']:>9.1f}{r['fraction_of_floor']:>7.2f}"
            f"{(peak / 2**30 if peak else 0):>9.1f}{(f'{error:.4f}' if error is not None else '-'):>9}"
            f"{r.get('recompiles_in_timed_runs', 0):>7}"
        )
        print("    stages " + ", ".join(f"{k} {v:.3f}" for k, v in r["stages"].items()))
    for item in summary["skipped"]:
        print(f"{item['name']:<26}skipped: {item['why']}")


if __name__ == "__main__":
    sys.exit(main())
