"""What each output format and setting costs: encode time, bytes and fidelity of a 1 MP result.

    python benchmarks/output_encoding.py [--size 1024] [--pictures 3] [--rounds 5] [--json]

Encodes photo-like pictures (not flat colour: a flat picture compresses to nothing at any level)
with the processor's own ``encode_image``, the generation parameters included, as PNG at zlib levels
1, 3, 6 (Pillow's default, the baseline) and 9, WebP and JPEG at a few qualities, and WebP at other
efforts. Two kinds of picture, ``--pictures`` of each:

* ``natural``: ``photos.photo``, the other benchmarks' photo-like pictures (an amplitude spectrum
  falling as 1/f, shared colour structure, hard-edged objects, a little noise): what a diffusion
  model's output looks like to a compressor;
* ``noisy``: ``devtools.hostile_images.photo_like``, smooth shapes under ±12 of uniform noise, the
  hard case for PNG (noise does not compress).

Rounds are interleaved (every variant of every picture, then again) so a load that comes and goes
on a shared machine falls on all of them alike. Per variant: the median over the pictures of each
picture's median time, its range over the pictures, and the ratios to level 6 of the same picture in
the same run; bytes and bits per pixel; PSNR against the picture (lossless: inf).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from photos import photo
from PIL import Image

from processor.devtools.hostile_images import photo_like
from processor.domain.images import encode_image
from processor.domain.rules import OutputFormat

Variant = tuple[OutputFormat, dict[str, Any]]
BASELINE = "png level 6"
VARIANTS: dict[str, Variant] = {
    "png level 1": ("png", {"png_level": 1}),
    "png level 3": ("png", {"png_level": 3}),
    BASELINE: ("png", {"png_level": 6}),
    "png level 9": ("png", {"png_level": 9}),
    "webp q75": ("webp", {"quality": 75}),
    "webp q85": ("webp", {"quality": 85}),
    "webp q90": ("webp", {"quality": 90}),
    "webp q95": ("webp", {"quality": 95}),
    "webp q90 method 0": ("webp", {"quality": 90, "webp_method": 0}),
    "webp q90 method 2": ("webp", {"quality": 90, "webp_method": 2}),
    "webp q90 method 3": ("webp", {"quality": 90, "webp_method": 3}),
    "webp q90 method 4": ("webp", {"quality": 90, "webp_method": 4}),  # libwebp's default
    "webp q90 method 6": ("webp", {"quality": 90, "webp_method": 6}),
    "jpeg q75": ("jpeg", {"quality": 75}),
    "jpeg q85": ("jpeg", {"quality": 85}),
    "jpeg q90": ("jpeg", {"quality": 90}),
    "jpeg q95": ("jpeg", {"quality": 95}),
}
TEXT = {
    "prompt": "make the sky a warm sunset, keep the people as they are",
    "negative_prompt": " ",
    "seed": "123456789",
    "num_inference_steps": "8",
    "true_cfg_scale": "1.0",
    "guidance_scale": "1.0",
    "width": "1024",
    "height": "1024",
    "model": "Qwen/Qwen-Image-Edit-2509",
    "model_revision": "",
    "speed": "fast",
}
"""What a real output carries (``params.generation_text``)."""


def psnr(picture: Image.Image, data: bytes) -> float:
    import io

    original = np.asarray(picture, dtype=np.float64)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
    mse = float(np.mean((original - decoded) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def encoder(picture: Image.Image, variant: Variant) -> Callable[[], bytes]:
    fmt, options = variant
    return lambda: encode_image(picture, fmt, TEXT, **options)


def measure(size: int, pictures: int, rounds: int) -> dict[str, Any]:
    pics = {f"natural {seed}": photo(seed, size, size) for seed in range(pictures)}
    pics |= {f"noisy {seed}": photo_like(size, size, seed) for seed in range(pictures)}
    times: dict[tuple[str, str], list[float]] = {(p, v): [] for p in pics for v in VARIANTS}
    sizes: dict[tuple[str, str], int] = {}
    for _ in range(rounds):
        for name, picture in pics.items():
            for label, variant in VARIANTS.items():
                encode = encoder(picture, variant)
                started = time.perf_counter()
                data = encode()
                times[name, label].append(time.perf_counter() - started)
                sizes[name, label] = len(data)
    fidelity = {(p, v): psnr(pics[p], encoder(pics[p], VARIANTS[v])()) for p in pics for v in VARIANTS}
    report: dict[str, Any] = {"size": size, "pictures": list(pics), "rounds": rounds, "variants": {}}
    for label in VARIANTS:
        ms = {p: 1000 * statistics.median(times[p, label]) for p in pics}
        base_ms = {p: 1000 * statistics.median(times[p, BASELINE]) for p in pics}
        report["variants"][label] = {
            "ms": statistics.median(ms.values()),
            "ms_range": [min(ms.values()), max(ms.values())],
            "time_ratio": statistics.median(ms[p] / base_ms[p] for p in pics),
            "bytes": statistics.median(sizes[p, label] for p in pics),
            "bytes_range": [min(sizes[p, label] for p in pics), max(sizes[p, label] for p in pics)],
            "bytes_ratio": statistics.median(sizes[p, label] / sizes[p, BASELINE] for p in pics),
            "bits_per_pixel": statistics.median(8 * sizes[p, label] / size**2 for p in pics),
            "psnr_db": statistics.median(fidelity[p, label] for p in pics),
            "by_picture": {p: {"ms": ms[p], "bytes": sizes[p, label]} for p in pics},
        }
    return report


def print_table(report: dict[str, Any]) -> None:
    print(
        f"{report['size']}x{report['size']}, {len(report['pictures'])} pictures "
        f"({', '.join(report['pictures'])}), {report['rounds']} interleaved rounds; ratios to {BASELINE}"
    )
    print(f"{'variant':<20} {'ms':>7} {'(range)':>15} {'x time':>7} {'KB':>7} {'(range)':>13} {'x bytes':>8} "
          f"{'bit/px':>7} {'PSNR':>6}")  # fmt: skip
    for label, row in report["variants"].items():
        low, high = row["ms_range"]
        small, big = (value / 1000 for value in row["bytes_range"])
        print(
            f"{label:<20} {row['ms']:7.1f} {f'({low:.0f}-{high:.0f})':>15} {row['time_ratio']:7.2f} "
            f"{row['bytes'] / 1000:7.0f} {f'({small:.0f}-{big:.0f})':>13} {row['bytes_ratio']:8.2f} "
            f"{row['bits_per_pixel']:7.2f} {row['psnr_db']:6.1f}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="side of the square pictures")
    parser.add_argument("--pictures", type=int, default=3, help="pictures of each kind")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = measure(args.size, args.pictures, args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()
