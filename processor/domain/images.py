"""Image input and output: decode and validate untrusted bytes, encode results.

Decoding refuses bad input with ``errors.InvalidInput`` and one of the reason codes
``empty_image``, ``truncated_image``, ``unknown_format``, ``too_many_bytes``,
``too_many_pixels``, ``too_small`` and ``animated_image``. The checks run in order of
cost: the byte count before Pillow sees the data, the header's pixel count before any
pixel is decoded (so a decompression bomb never expands), then the full decode.

Only PNG, JPEG and WebP are accepted. A decoded image is upright (EXIF orientation
applied) and RGB, with any transparency flattened onto white: the model takes RGB only.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from processor.domain import rules
from processor.domain.embedded_metadata import DigitalSource, exif_block, xmp_packet
from processor.domain.errors import InvalidInput
from processor.domain.reasons import ReasonCode
from processor.domain.rules import JPEG_MAX_PIXEL_SCANS, JPEG_MAX_SCANS, OutputFormat

# Pillow format names we open. MPO is how Pillow names a JPEG with extra pictures
# (phone cameras write them): it is a still image, and its first picture is the photo.
_ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_STILL_MULTI_PICTURE_FORMATS = frozenset({"MPO"})

# Leading bytes of the accepted formats: data that starts like one of them but does not
# open is damaged ("truncated_image"), anything else is "unknown_format".
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")

# What Pillow raises on damaged data, from the header parsers and the decoders.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What an input image may be: at most ``max_bytes`` and ``max_pixels``, sides at least ``min_side``,
    decoded within ``max_decode_seconds`` of CPU time (enforced where images are decoded in a pool
    process, ``processor.core.decoding``; ``decode_image`` itself runs as long as it runs).

    Pillow's own decompression-bomb guard stays on as a second line: it refuses images
    above twice ``PIL.Image.MAX_IMAGE_PIXELS`` (about 179 MP) whatever ``max_pixels`` says.
    """

    max_bytes: int = rules.MAX_IMAGE_BYTES
    max_pixels: int = rules.MAX_IMAGE_PIXELS
    min_side: int = rules.MIN_IMAGE_SIDE
    max_decode_seconds: float = rules.MAX_DECODE_SECONDS


_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]{1,64};base64,")
"""The one data: URL prefix accepted: an image media type, base64, nothing else (no charset, no name)."""


def decode_base64_image(text: object) -> bytes:
    """The bytes of a base64 image, or of a ``data:image/<type>;base64,`` URL; else ``invalid_base64``.

    The one decoder of every way in (REST, MCP, RunPod). Strict: no whitespace, no URL-safe
    alphabet, correct padding. A ``data:`` URL is recognised only by its exact prefix, so
    text that merely contains a comma is decoded whole (and refused), not cut at the comma.
    """
    if not isinstance(text, str):
        raise InvalidInput("an image must be a base64 string", reason=ReasonCode.INVALID_BASE64)
    if text.startswith("data:"):
        prefix = _DATA_URL.match(text)
        if prefix is None:
            raise InvalidInput(
                "a data: URL image must start with data:image/<type>;base64,",
                reason=ReasonCode.INVALID_BASE64,
            )
        text = text[prefix.end() :]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("image is not valid base64", reason=ReasonCode.INVALID_BASE64) from exc


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Decode untrusted bytes into an upright RGB image, or raise ``InvalidInput``."""
    if not data:
        raise InvalidInput("the image is empty (0 bytes)", reason=ReasonCode.EMPTY_IMAGE)
    if len(data) > limits.max_bytes:
        raise InvalidInput(
            f"the image has {len(data):,} bytes; the limit is {limits.max_bytes:,}",
            reason=ReasonCode.TOO_MANY_BYTES,
        )
    image = _open_header(data)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InvalidInput(
            f"the image is {width}×{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,}",
            reason=ReasonCode.TOO_MANY_PIXELS,
        )
    if min(width, height) < limits.min_side:
        raise InvalidInput(
            f"the image is {width}×{height}; each side must be at least {limits.min_side} pixels",
            reason=ReasonCode.TOO_SMALL,
        )
    if image.format in ("JPEG", "MPO"):
        _check_scan_work(data, width * height)
    if getattr(image, "is_animated", False) and image.format not in _STILL_MULTI_PICTURE_FORMATS:
        frames = getattr(image, "n_frames", "several")
        raise InvalidInput(
            f"the image is animated ({image.format}, {frames} frames); send a single still image",
            reason=ReasonCode.ANIMATED_IMAGE,
        )
    try:
        image.load()
        return to_rgb(_upright(image))
    except _DECODE_ERRORS as exc:
        raise InvalidInput(
            f"the image data is truncated or corrupt: {exc}", reason=ReasonCode.TRUNCATED_IMAGE
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow raises TypeError, AttributeError, IndexError... for some crafted files (found by
        # mutation fuzzing): whatever the decoder trips on, the bytes are the caller's fault.
        raise InvalidInput(
            f"the image cannot be decoded ({type(exc).__name__})", reason=ReasonCode.CORRUPT_IMAGE
        ) from exc


_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says. Only the orientation is read: unlike
    ``ImageOps.exif_transpose`` nothing rewrites the metadata, which crafted EXIF blocks break
    (and the output never carries the input's metadata anyway). Unreadable EXIF means upright."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return image
    method = _TRANSPOSES.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def jpeg_scan_count(data: bytes, *, stop_after: int | None = None) -> int:
    """The start-of-scan markers libjpeg acts on when it decodes ``data``: at least as many scans as
    any decode of these bytes runs, however they are dressed. With ``stop_after``, counting stops
    at the first scan past it (that is enough to refuse the file).

    The walk is libjpeg's marker reader (``jdmarker.c``), not the JPEG standard's ideal file:

    - a marker is found as ``next_marker`` finds it: bytes that are not ``FF`` are skipped (junk,
      "extraneous bytes before marker" is only a warning), then fill bytes ``FF FF...``, and a
      ``FF 00`` is junk too. Entropy-coded data ends at the same place, the first ``FF`` followed by
      neither ``00`` nor ``FF``, so a scan's data cannot hide an ``FF DA`` and needs no parser;
    - segments with a length (APPn with an EXIF thumbnail and its own scans, COM, DQT, DHT, SOF,
      DRI, DNL, SOS's header...) are skipped by it, as libjpeg skips them; a length under 2 skips
      only the length field, as ``skip_variable`` does;
    - markers libjpeg treats as having no parameters (RSTn, TEM) and those it refuses (a second SOI,
      reserved codes; inside a scan with restarts it scans past them) are stepped over: counting on
      past a marker the decoder would stop at can only count more;
    - EOI ends it: libjpeg reads nothing after it (a second picture, trailing data).

    Checked against ``djpeg -verbose``'s trace of every scan it reads: equal or more on the
    variants in ``processor/devtools/hostile_images.py`` and on thousands of mutated files.
    """
    if not data.startswith(b"\xff\xd8"):
        return 0  # libjpeg's first_marker wants SOI at the start, or it refuses the file
    scans, pos, size = 0, 2, len(data)
    while True:
        if pos + 1 < size and data[pos] == 0xFF and _ACTED_ON[data[pos + 1]]:
            code, pos = data[pos + 1], pos + 2  # the usual case: the next segment right here
        elif found := _SEGMENT_OR_END.search(data, pos):
            code, pos = data[found.end() - 1], found.end()
        else:
            break
        if code == _EOI:
            break
        if code == _SOS:
            scans += 1
            if stop_after is not None and scans > stop_after:
                break
        if pos + 2 > size:
            break
        pos += max(data[pos] << 8 | data[pos + 1], 2)
    return scans


_EOI, _SOS = 0xD9, 0xDA
_SEGMENT_OR_END = re.compile(rb"\xff[\xc0-\xcf\xd9-\xfe]")
"""The next marker with a length, or EOI. libjpeg skips to the first FF, skips fill bytes (more FF)
and reads the code: 00 makes the pair junk (or stuffing in a scan), and 01-BF, RSTn (D0-D7) and
SOI (D8) have no length, so the search steps over them too."""
_ACTED_ON = bytes(0xC0 <= code <= 0xCF or 0xD9 <= code <= 0xFE for code in range(256))
"""The same codes, as a table: a segment that starts where the last one ended is read without a search."""


def _check_scan_work(data: bytes, pixels: int) -> None:
    """Refuse a JPEG whose scans would cost more decoding than any real photo needs: more than
    ``JPEG_MAX_SCANS``, or more than ``JPEG_MAX_PIXEL_SCANS`` scans × pixels."""
    allowed = min(JPEG_MAX_SCANS, JPEG_MAX_PIXEL_SCANS // max(pixels, 1))
    if jpeg_scan_count(data, stop_after=allowed) > allowed:
        raise InvalidInput(
            f"the JPEG has more than {allowed} scans over {pixels:,} pixels; at most {JPEG_MAX_SCANS} "
            f"scans and {JPEG_MAX_PIXEL_SCANS:,} pixel-scans are decoded",
            reason=ReasonCode.TOO_MANY_SCANS,
        )


def _open_header(data: bytes) -> Image.Image:
    """``Image.open`` reads the header only: size and format, no pixels yet."""
    try:
        return Image.open(io.BytesIO(data), formats=_ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (twice ``Image.MAX_IMAGE_PIXELS``) can fire inside ``open``,
        # before our limit is checked; it is the same refusal. The warning below its hard
        # cap is a warning, which is raised only where warnings are errors (tests).
        raise InvalidInput(f"the image is too large: {exc}", reason=ReasonCode.TOO_MANY_PIXELS) from exc
    except Image.DecompressionBombWarning as exc:
        raise InvalidInput(f"the image is too large: {exc}", reason=ReasonCode.TOO_MANY_PIXELS) from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        if _looks_like_accepted_format(data):
            raise InvalidInput(
                "the image header is truncated or corrupt", reason=ReasonCode.TRUNCATED_IMAGE
            ) from exc
        raise InvalidInput(
            "unrecognised image format; send PNG, JPEG or WebP", reason=ReasonCode.UNKNOWN_FORMAT
        ) from exc


def _looks_like_accepted_format(data: bytes) -> bool:
    if any(data.startswith(signature) for signature in _SIGNATURES):
        return True
    # A PNG or JPEG signature cut short is still recognisably one of them.
    if len(data) < 8 and any(signature.startswith(data) for signature in _SIGNATURES):
        return True
    return data[:4] == b"RIFF" and (len(data) < 12 or data[8:12] == b"WEBP")


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB version of ``image``: transparency flattened onto white, 16-bit scaled to 8-bit."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # Pillow's own I;16 → L conversion clips at 255 instead of scaling: 16-bit greys would turn white.
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return Image.fromarray((wide >> 8).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True, slots=True)
class OutputEncoding:
    """How a result is encoded: a format and, for WebP and JPEG, a quality."""

    format: OutputFormat = rules.DEFAULT_OUTPUT_FORMAT
    quality: int = rules.DEFAULT_OUTPUT_QUALITY

    def for_request(self, output_format: OutputFormat | None, output_quality: int | None) -> OutputEncoding:
        """The request's choices where it made them; this (the deployment's default) where not."""
        return OutputEncoding(
            self.format if output_format is None else output_format,
            self.quality if output_quality is None else output_quality,
        )

    @property
    def media_type(self) -> str:
        return rules.OUTPUT_MEDIA_TYPES[self.format]

    @property
    def extension(self) -> str:
        return rules.OUTPUT_EXTENSIONS[self.format]

    @property
    def lossless(self) -> bool:
        return self.format == "png"

    def metadata(self) -> dict[str, str | int]:
        """What a result records of its encoding: ``output_format``, ``media_type`` and, for the lossy
        formats, ``output_quality``."""
        quality = {} if self.lossless else {"output_quality": self.quality}
        return {"output_format": self.format, "media_type": self.media_type, **quality}


def encode_image(
    image: Image.Image,
    fmt: OutputFormat = "png",
    text: Mapping[str, str] | None = None,
    *,
    quality: int = rules.DEFAULT_OUTPUT_QUALITY,
    png_level: int = rules.PNG_COMPRESS_LEVEL,
    webp_method: int = rules.WEBP_METHOD,
    source: DigitalSource | None = None,
) -> bytes:
    """Encode ``image`` as PNG (zlib level ``png_level``), WebP (effort ``webp_method``) or JPEG
    (4:4:4 colour), the lossy two at ``quality`` (1-100),
    with ``text`` (the generation parameters) and ``source`` inside the file: PNG text chunks, EXIF
    and XMP (``embedded_metadata``). PNG ignores ``quality``: it is lossless.

    PNG output is deterministic: the same pixels and text give the same bytes.
    """
    metadata = text is not None or source is not None
    xmp = xmp_packet(text or {}, source) if metadata else None
    buffer = io.BytesIO()
    if fmt == "png":
        info = PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value)  # Pillow writes iTXt (UTF-8) where Latin-1 cannot hold the value
        if xmp is not None:
            info.add_itxt(_PNG_XMP_KEY, xmp.decode())
        image.save(buffer, format="PNG", pnginfo=info, compress_level=png_level)
    elif fmt in ("webp", "jpeg"):
        extra = {"exif": exif_block(text or {}), "xmp": xmp} if metadata else {}
        if fmt == "webp":
            image.save(buffer, format="WEBP", quality=quality, method=webp_method, **extra)
        else:
            image.convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=0, **extra)
    else:
        raise InvalidInput(
            f"unknown output format {fmt!r}; use png, webp or jpeg", reason=ReasonCode.INVALID_PARAMETER
        )
    return buffer.getvalue()


_PNG_XMP_KEY = "XML:com.adobe.xmp"
"""The iTXt keyword of an XMP packet in PNG (XMP Specification Part 3, 1.1.5)."""


def parse_hex_colour(value: str) -> tuple[int, int, int]:
    """``(r, g, b)`` of ``#rrggbb``; ``InvalidInput('invalid_parameter')`` otherwise (as the database checks)."""
    if not isinstance(value, str) or not rules.HEX_COLOUR.fullmatch(value):
        raise InvalidInput(f"base_color must be #rrggbb, got {value!r}", reason=ReasonCode.INVALID_PARAMETER)
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


def base_canvas(base: str, width: int, height: int, *, seed: int, colour: str = "#ffffff") -> Image.Image:
    """The image a request without inputs starts from: ``blank`` in ``colour``, or ``noise``.

    The model always edits an image; creating "from nothing" edits this one. Noise comes
    from ``seed`` (numpy's PCG64, independent of torch and the device), so a fixed seed
    gives the same canvas, and with it the same result, on every machine.
    """
    if base == "blank":
        return Image.new("RGB", (width, height), parse_hex_colour(colour))
    if base == "noise":
        pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        return Image.fromarray(pixels)
    raise InvalidInput(f"base must be 'blank' or 'noise', got {base!r}", reason=ReasonCode.INVALID_PARAMETER)
