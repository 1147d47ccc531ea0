"""Decoding untrusted image bytes: every refusal reason, with real malformed files, and normalisation."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from processor.composition import image_limits
from processor.domain.errors import InvalidInput
from processor.domain.images import ImageLimits, decode_image, encode_image
from processor.domain.rules import MAX_PROMPT_CHARS, OutputFormat
from processor.settings import Settings
from tests.embedded import PILLOW_FORMATS, embedded, parameters_in

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=4_000_000, min_side=32)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(width: int = 64, height: int = 48, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(), mode=mode) if channels > 1 else Image.fromarray(pixels[..., 0])


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header claiming ``width``×``height`` greyscale pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + png_chunk(b"IEND", b"")
    )


def reason_for(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(InvalidInput) as caught:
        decode_image(data, limits)
    assert not caught.value.retryable
    return caught.value.reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_decode_to_rgb_of_the_same_size(fmt: str) -> None:
    image = decode_image(encoded(noise(64, 48), fmt), LIMITS)
    assert (image.mode, image.size) == ("RGB", (64, 48))


def test_empty_data_is_refused() -> None:
    assert reason_for(b"") == "empty_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_data_cut_in_half_is_truncated(fmt: str) -> None:
    data = encoded(noise(200, 150), fmt)
    assert reason_for(data[: len(data) // 2]) == "truncated_image"


@pytest.mark.parametrize("length", [4, 12, 30])
def test_a_png_cut_inside_its_header_is_truncated_not_unknown(length: int) -> None:
    assert reason_for(encoded(noise(), "PNG")[:length]) == "truncated_image"


def test_a_png_with_corrupt_pixel_data_is_truncated() -> None:
    data = bytearray(encoded(noise(200, 150), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 200] = bytes(200)  # zeroed deflate stream (and a wrong CRC)
    assert reason_for(bytes(data)) == "truncated_image"


@pytest.mark.parametrize(
    "data",
    [
        b"definitely not an image",
        encoded(noise(), "GIF"),  # GIF is not accepted, animated or not
        encoded(noise(), "BMP"),
        encoded(noise(), "TIFF"),
        b"%PDF-1.7\n" + bytes(100),
    ],
    ids=["text", "gif", "bmp", "tiff", "pdf"],
)
def test_other_formats_are_unknown(data: bytes) -> None:
    assert reason_for(data) == "unknown_format"


def test_more_bytes_than_the_limit_are_refused_before_decoding() -> None:
    data = encoded(noise(), "PNG")
    assert reason_for(data, ImageLimits(max_bytes=len(data) - 1)) == "too_many_bytes"
    assert decode_image(data, ImageLimits(max_bytes=len(data))).size == (64, 48)


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = png_claiming(6000, 6000)  # 36 MP claimed in a file of about 100 bytes
    assert len(bomb) < 200
    # The pixel data is junk: a decode would fail as truncated, so this reason proves no decode ran.
    assert reason_for(bomb, ImageLimits(max_pixels=25_000_000)) == "too_many_pixels"


def test_pillows_own_bomb_guard_maps_to_too_many_pixels() -> None:
    # Above twice Image.MAX_IMAGE_PIXELS Pillow refuses inside Image.open, before our check.
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 100
    assert reason_for(png_claiming(side, side), ImageLimits(max_pixels=10**12)) == "too_many_pixels"


def test_exactly_the_pixel_limit_is_accepted() -> None:
    image = decode_image(encoded(noise(64, 48), "PNG"), ImageLimits(max_pixels=64 * 48))
    assert image.size == (64, 48)
    assert reason_for(encoded(noise(64, 48), "PNG"), ImageLimits(max_pixels=64 * 48 - 1)) == "too_many_pixels"


@pytest.mark.parametrize("size", [(31, 100), (100, 31)])
def test_a_side_below_the_minimum_is_too_small(size: tuple[int, int]) -> None:
    assert reason_for(encoded(noise(*size), "PNG")) == "too_small"


def frames() -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), color) for color in ("red", "green", "blue")]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])  # APNG and animated WebP
def test_animated_images_are_refused(fmt: str) -> None:
    first, *rest = frames()
    data = encoded(first, fmt, save_all=True, append_images=rest, duration=100, loop=0)
    assert reason_for(data) == "animated_image"


def test_a_multi_picture_jpeg_is_a_still_photo() -> None:
    # Phone cameras write MPO: a JPEG plus extra pictures. The first picture is the photo.
    first, *rest = frames()
    data = encoded(first, "MPO", save_all=True, append_images=rest)
    image = decode_image(data, LIMITS)
    assert image.size == (64, 64)
    assert image.getpixel((32, 32))[0] > 200  # red: the first picture


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (60, 40), "black")
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # a red mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image = decode_image(encoded(stored, "PNG", exif=exif), LIMITS)
    assert image.size == (40, 60)
    assert image.getpixel((35, 5)) == (255, 0, 0)  # now at the top-right
    assert decode_image(encoded(stored, "JPEG", exif=exif), LIMITS).size == (40, 60)


def test_transparency_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 128), (0, 0, 32, 64))
    image = decode_image(encoded(rgba, "PNG"), LIMITS)
    assert image.mode == "RGB"
    assert image.getpixel((48, 10)) == (255, 255, 255)  # fully transparent → white, not black
    red, green, blue = image.getpixel((10, 10))
    assert red == 255 and 120 <= green <= 135 and green == blue  # half-transparent red on white


def test_greyscale_with_alpha_and_palette_transparency_are_flattened() -> None:
    la = Image.new("LA", (64, 64), (0, 0))
    assert decode_image(encoded(la, "PNG"), LIMITS).getpixel((1, 1)) == (255, 255, 255)
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 32, 64))
    image = decode_image(encoded(palette, "PNG", transparency=0), LIMITS)
    assert image.getpixel((10, 10)) == (255, 0, 0)
    assert image.getpixel((50, 10)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("RGB", (64, 64), (200, 30, 30)).convert("CMYK")
    image = decode_image(encoded(cmyk, "JPEG", quality=95), LIMITS)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((32, 32))
    assert red > 150 and green < 80 and blue < 80


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    wide = Image.fromarray(np.full((48, 64), 40000, dtype=np.uint16))
    data = encoded(wide, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert decode_image(data, LIMITS).getpixel((0, 0)) == (156, 156, 156)  # 40000 >> 8


def test_limits_come_from_settings() -> None:
    settings = Settings(max_image_bytes=123, max_image_pixels=456, min_image_side=7)
    assert image_limits(settings) == ImageLimits(max_bytes=123, max_pixels=456, min_side=7)


def test_png_output_carries_the_parameters_as_text_and_is_deterministic() -> None:
    image = noise()
    text = {"prompt": "make it 青い ✓", "seed": "42"}
    data = encode_image(image, "png", text)
    assert data == encode_image(image, "png", text)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.format == "PNG"
    assert parameters_in(data, "png") == text
    assert np.array_equal(np.asarray(reopened), np.asarray(image))


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_every_format_carries_the_parameters_in_text_chunks_or_exif_and_in_xmp(fmt: OutputFormat) -> None:
    text = {"prompt": 'make it 青い ✓ & <keep> "this"', "negative_prompt": "fog\r\nrain\t", "seed": "42"}
    found = embedded(encode_image(noise(), fmt, text, source="compositeWithTrainedAlgorithmicMedia"))
    assert (found.format, found.text, found.xmp) == (PILLOW_FORMATS[fmt], text, text)
    assert (
        found.source == "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
    )
    assert found.creator == "qwen-edit-processor"


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_characters_xml_cannot_hold_are_exact_in_the_text_and_replaced_in_xmp(fmt: OutputFormat) -> None:
    # A prompt may hold any character but NUL; XML 1.0 cannot hold a vertical tab or an unpaired surrogate.
    text = {"prompt": "a\x0bb\x1fc", "negative_prompt": "ok"}
    found = embedded(encode_image(noise(), fmt, text))
    assert found.text == text
    assert found.xmp == {"prompt": "a\ufffdb\ufffdc", "negative_prompt": "ok"}


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_the_longest_prompts_fit_the_metadata_of_every_format(fmt: OutputFormat) -> None:
    # EXIF and XMP each live in one JPEG segment (at most 64 KiB): the longest prompts, in the
    # characters that grow most (an emoji is 12 bytes of JSON escapes, `&` is 5 of XML), must fit.
    for char in ("\U0001f600", "&", "\u9752"):
        text = {"prompt": char * MAX_PROMPT_CHARS, "negative_prompt": char * MAX_PROMPT_CHARS, "seed": "1"}
        assert parameters_in(encode_image(noise(), fmt, text), fmt) == text


def test_quality_changes_webp_and_jpeg_and_png_ignores_it() -> None:
    image = noise(256, 256)
    for fmt in ("webp", "jpeg"):
        assert len(encode_image(image, fmt, quality=30)) < len(encode_image(image, fmt, quality=95))
    assert encode_image(image, "png", quality=30) == encode_image(image, "png", quality=95)


def test_an_unknown_output_format_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        encode_image(noise(), "gif")  # type: ignore[arg-type]
    assert caught.value.reason == "invalid_parameter"
