"""Live previews of a running edit, from the latents, without the VAE (docs/previews.md).

A VAE decode per preview would cost a sizeable share of a step on a 20B model; a linear map of the
latent channels to RGB costs a few small kernels. The map is not a table copied from anywhere: it
is fitted once per loaded model, by least squares, from the model's own VAE:

1. ``fitting_images``: solid colours (the corners of the RGB cube, greys, mid tones), gradients
   along each axis, and two smooth seeded random images, ``FIT_SIDE`` pixels square;
2. encoded with the pipeline's VAE exactly as the pipeline encodes its inputs (``argmax`` of the
   latent distribution, then normalised with the VAE's ``latents_mean``/``latents_std``, the space
   the denoising loop works in);
3. each latent pixel (``z_dim`` channels plus a constant 1) is paired with its 8×8 block of the
   image, averaged (the VAE's spatial factor), and ``[z, 1] @ W ≈ rgb`` is solved with a small
   ridge term, giving ``W`` of shape ``(z_dim + 1, 3)``.

It works for any VAE of this shape, the real one and the tiny test one alike; how good it is
depends on how linear the VAE's latent space is in colour (for Qwen-Image's it gives the usual
blurry but recognisable latent preview).

At a step, ``project`` unpacks Qwen's packed latents (tokens of 2×2 patches of ``z_dim``
channels) to ``(z_dim, H/8, W/8)`` and applies ``W``: an RGB picture at latent resolution, an
eighth of the output's side. ``PreviewWorker`` does the rest (copy to the host, WebP encode,
hand-over) on a thread of its own, keeping only the newest picture, so steps never wait for it.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

import torch
from PIL import Image

from processor.domain.ports.editor import Preview, PreviewSink

log = logging.getLogger(__name__)

FIT_SIDE = 64
"""Side of the fitting images: 8×8 latent pixels each at the VAE's factor of 8."""
RIDGE = 1e-3
"""Tikhonov term of the fit, relative to the mean of the normal matrix's diagonal: keeps the
solution bounded when channels are nearly collinear (a tiny random VAE)."""
WEBP_QUALITY = 80
CLOSE_SECONDS = 5.0
"""How long the end of an edit waits for a preview being encoded or handed over."""


def fitting_images(side: int = FIT_SIDE) -> torch.Tensor:
    """``(N, 3, side, side)`` in [0, 1]: solid colours, per-channel gradients, smooth random images."""
    solids = [(r, g, b) for r in (0.0, 1.0) for g in (0.0, 1.0) for b in (0.0, 1.0)] + [
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        (0.75, 0.75, 0.75),
        (0.8, 0.4, 0.2),
        (0.2, 0.6, 0.4),
    ]
    images = [torch.tensor(colour).view(3, 1, 1).expand(3, side, side) for colour in solids]
    ramp = torch.linspace(0.0, 1.0, side)
    horizontal, vertical = ramp.view(1, side).expand(side, side), ramp.view(side, 1).expand(side, side)
    for channel in range(3):
        for field in (horizontal, vertical, 1.0 - (horizontal + vertical) / 2):
            image = torch.full((3, side, side), 0.5)
            image[channel] = field
            images.append(image)
    generator = torch.Generator("cpu").manual_seed(0)
    for _ in range(2):
        coarse = torch.rand((1, 3, 4, 4), generator=generator)
        smooth = torch.nn.functional.interpolate(
            coarse, size=(side, side), mode="bilinear", align_corners=True
        )
        images.append(smooth[0])
    return torch.stack([image.contiguous() for image in images])


def fit_projection(pipe: Any) -> torch.Tensor:
    """Least-squares ``(z_dim + 1, 3)`` map from normalised latent channels (and 1) to RGB in [0, 1]."""
    vae = pipe.vae
    factor = int(pipe.vae_scale_factor)
    images = fitting_images()
    device = torch.device(pipe._execution_device)
    pixels = (images * 2 - 1).unsqueeze(2).to(device, vae.dtype)  # the VAE takes (B, C, T, H, W) in [-1, 1]
    with torch.inference_mode():
        latents = vae.encode(pixels).latent_dist.mode()[:, :, 0].float().cpu()
    z_dim = latents.shape[1]
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z_dim, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z_dim, 1, 1)
    latents = (latents - mean) / std
    targets = torch.nn.functional.avg_pool2d(images, factor)  # (N, 3, side/8, side/8)
    features = latents.permute(0, 2, 3, 1).reshape(-1, z_dim).double()
    features = torch.cat([features, torch.ones((features.shape[0], 1), dtype=torch.float64)], dim=1)
    rgb = targets.permute(0, 2, 3, 1).reshape(-1, 3).double()
    normal = features.T @ features
    ridge = RIDGE * normal.diagonal().mean() * torch.eye(normal.shape[0], dtype=torch.float64)
    weights: torch.Tensor = torch.linalg.solve(normal + ridge, features.T @ rgb)
    return weights.float()


def unpack(latents: torch.Tensor, height: int, width: int, vae_scale_factor: int) -> torch.Tensor:
    """Packed ``(1, tokens, 4·z)`` latents to ``(z, h, w)`` at latent resolution: each token is a
    2×2 patch of ``z`` channels, tokens row-major (the inverse of the pipeline's ``_pack_latents``)."""
    h = 2 * (height // (vae_scale_factor * 2))
    w = 2 * (width // (vae_scale_factor * 2))
    _, _, channels = latents.shape
    z = channels // 4
    return latents[0].view(h // 2, w // 2, z, 2, 2).permute(2, 0, 3, 1, 4).reshape(z, h, w)


def project(latents: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(z, h, w)`` latents to ``(h, w, 3)`` uint8 RGB, on the latents' device."""
    z = latents.shape[0]
    w = weights.to(latents.device, torch.float32)
    rgb = torch.einsum("zhw,zc->hwc", latents.float(), w[:z]) + w[z]
    return (rgb.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def encode_webp(rgb: torch.Tensor) -> tuple[bytes, int, int]:
    """``(h, w, 3)`` uint8 on the CPU to WebP bytes, width, height."""
    height, width, _ = rgb.shape
    image = Image.frombytes("RGB", (width, height), rgb.contiguous().numpy().tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=WEBP_QUALITY, method=0)
    return buffer.getvalue(), width, height


class PreviewWorker:
    """One edit's previews off the step path: ``offer`` keeps the newest picture, a thread encodes it.

    ``offer`` (the step callback's part) starts the device-to-host copy of the small projected
    picture without waiting for it and swaps it into a one-place mailbox; a picture still waiting
    when a newer one comes is dropped (counted in ``dropped``). ``close`` (when the edit ends,
    whatever its end) drops what waits and joins the thread: nothing is delivered after it.
    """

    def __init__(self, sink: PreviewSink, total: int) -> None:
        self._sink = sink
        self._total = total
        self._changed = threading.Condition()
        self._pending: tuple[int, torch.Tensor, Any] | None = None
        self._closed = threading.Event()
        self.offered = 0
        self.dropped = 0
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, name="diffusers-previews", daemon=True)
        self._thread.start()

    def offer(self, step: int, rgb: torch.Tensor) -> None:
        """On the step's thread: start the copy to the host and hand it over; never waits."""
        event = None
        if rgb.device.type == "cuda":
            host = rgb.to("cpu", non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
        else:
            host = rgb
        with self._changed:
            self.offered += 1
            if self._pending is not None:
                self.dropped += 1
            self._pending = (step, host, event)
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed.set()
            if self._pending is not None:
                self.dropped += 1
                self._pending = None
            self._changed.notify()
        # ``deliver`` returns at once by contract; a sink that breaks it holds its own thread, not the edit.
        self._thread.join(timeout=CLOSE_SECONDS)
        if self._thread.is_alive():
            log.warning("a preview is still being delivered after the edit; it is left to finish")

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed.is_set() or self._pending is not None)
                if self._closed.is_set():
                    return
                assert self._pending is not None
                (step, host, event), self._pending = self._pending, None
            try:
                if event is not None:
                    event.synchronize()  # this thread waits for the copy; the steps do not
                data, width, height = encode_webp(host)
                preview = Preview(step, self._total, data, "image/webp", width, height)
                if self._closed.is_set():
                    return
                # Outside the lock, so ``offer`` never waits on the sink; ``close`` joins this
                # thread, so it returns only once this hand-over is done.
                self._sink.deliver(preview)
                self.delivered += 1
            except Exception:
                # A preview is a courtesy: a failed one is logged, and the edit goes on.
                log.exception("preview failed; the edit goes on")
