"""The product's rules in one place: choices, limits and defaults every way in shares.

SQL mirrors them with CHECK constraints; a parity test proves both agree.
"""

from __future__ import annotations

from typing import Literal

MemoryMode = Literal["full", "offload", "quantized"]
"""How the diffusers engine uses GPU memory (``MEMORY_MODE``)."""
Quantization = Literal["nf4", "int8"]
"""Transformer weights with ``MEMORY_MODE=quantized`` (``QUANTIZATION``)."""
DeviceChoice = Literal["auto", "cuda", "cpu"]
"""Where the model runs (``DEVICE``): ``auto`` is CUDA when available."""

WEBHOOK_MAX_BODY_BYTES = 256 * 1024
"""A database webhook carries one row (and its old version on UPDATE): a few KB, 256 KiB at most."""
