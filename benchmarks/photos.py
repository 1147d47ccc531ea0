"""Photo-like test pictures for the benchmarks: what users send, without shipping photographs.

Encode and decode costs depend on content: a flat colour compresses to nothing and pure noise not at
all, and neither is what users upload. These pictures have the statistics of natural images: an
amplitude spectrum falling about as 1/f (the power law of natural scenes; D. J. Field, JOSA A 4(12),
1987; van der Schaaf and van Hateren, Vision Research 36(17), 1996), colour channels that share most
of their structure, a few hard-edged objects and a little sensor noise. They compress as photographs
do; ``python benchmarks/photos.py`` prints the sizes (at 1024x1024 about 12 bits a pixel in PNG and
230 KB in JPEG at quality 90). Each seed gives a different picture.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def photo(seed: int, width: int = 1024, height: int = 1024) -> Image.Image:
    """A deterministic RGB picture with natural-image statistics (see the module docstring)."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0
    # Amplitude falling as 1/f^1.2 (natural scenes: 1/f^0.8 to 1/f^1.5), softened near the pixel
    # pitch as a lens and a demosaicing filter soften it.
    amplitude = radius**-1.2 * np.exp(-((radius / 0.25) ** 2))

    def field() -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
        plane = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        return (plane - plane.mean()) / plane.std()

    luminance = field()
    channels = [0.85 * luminance + 0.35 * field() for _ in range(3)]
    tint = rng.uniform(-25, 25, 3)
    pixels = np.stack([118 + 38 * c + t for c, t in zip(channels, tint, strict=True)], axis=-1)
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    # Objects: hard edges, as between things in a scene.
    draw = ImageDraw.Draw(picture)
    for _ in range(6):
        x, y = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 16, width // 4), rng.integers(height // 16, height // 4)
        colour = tuple(int(v) for v in rng.integers(30, 225, 3))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
    # The objects are lit and textured too, and a sensor adds noise everywhere.
    shaded = np.asarray(picture, dtype=np.float32) * (1 + 0.12 * luminance[..., None])
    shaded += rng.normal(0, 2.0, shaded.shape)
    return Image.fromarray(np.clip(shaded, 0, 255).astype(np.uint8), "RGB")


def main() -> None:
    for seed in range(3):
        picture = photo(seed)
        png, jpeg = encoded(picture, "png"), encoded(picture, "jpeg")
        bits = 8 * len(png) / (picture.width * picture.height)
        print(
            f"seed {seed}: PNG {len(png) / 1e6:.2f} MB ({bits:.1f} bits a pixel), JPEG q90 {len(jpeg) / 1e3:.0f} KB"
        )


def encoded(picture: Image.Image, image_format: str) -> bytes:
    """``png`` (Pillow's default level 6, as phones and browsers save) or ``jpeg`` (quality 90)."""
    buffer = io.BytesIO()
    if image_format == "png":
        picture.save(buffer, format="PNG")
    elif image_format == "jpeg":
        picture.save(buffer, format="JPEG", quality=90)
    else:
        raise ValueError(f"unknown format {image_format!r}")
    return buffer.getvalue()


if __name__ == "__main__":
    main()
