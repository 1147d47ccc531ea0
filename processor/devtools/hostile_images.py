"""Crafted images for tests and benchmarks: scan bombs and the ways to hide their scans, and files
that cost seconds of decoding without breaking any rule that can be counted before decoding.

A scan bomb is a valid progressive JPEG with thousands of scans: each one makes libjpeg walk
every block of the image again, so a megabyte of scan headers costs minutes of decoding. The
variants below are the same bomb with bytes that libjpeg (and Pillow's header parser) skip or
tolerate, each a way to make a scan counter that reads the file differently from the decoder
miss the scans. Everything is deterministic (seeded), so a failing case names its bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

SOI, EOI, SOS = b"\xff\xd8", b"\xff\xd9", b"\xff\xda"


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB picture that compresses like a photo: smooth shapes plus a little sensor noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noisy = smooth.astype(np.int16) + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def progressive_jpeg(size: int = 256, *, exif: bytes | None = None, quality: int = 50) -> bytes:
    """A progressive colour JPEG of noise: libjpeg's simple progression, 10 scans."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    extra = {"exif": exif} if exif else {}
    Image.fromarray(pixels).save(buffer, format="JPEG", progressive=True, quality=quality, **extra)
    return buffer.getvalue()


def segments_end(data: bytes) -> int:
    """Where the first scan's SOS marker is: the end of the header segments."""
    pos = 2
    while data[pos + 1] != SOS[1]:
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return pos


def segment_starts(data: bytes) -> list[int]:
    """Where each header segment (APP0, DQT, SOF, DHT...) starts, up to the first scan."""
    starts, pos = [], 2
    while data[pos + 1] != SOS[1]:
        starts.append(pos)
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return [*starts, pos]


TINY_AC_SCAN = SOS + bytes([0, 8, 1, 1, 0x00, 1, 63, 0]) + b"\x00" * 6
"""An AC scan of component 1 with six bytes of entropy data: 16 bytes, one more walk over its blocks."""


def scan_bomb(size: int = 256, scans: int = 3000, *, scan: bytes = TINY_AC_SCAN) -> bytes:
    """``progressive_jpeg(size)`` with ``scans`` copies of ``scan`` before its end: 16 bytes a scan."""
    data = progressive_jpeg(size)
    end = data.rfind(EOI)
    return data[:end] + scan * scans + data[end:]


def with_repeated_scan(data: bytes, copies: int) -> bytes:
    """The JPEG with its smallest real scan repeated: few bytes, many passes over every block."""
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    end_of_image = data.rfind(EOI)
    scans = [data[a:b] for a, b in zip(starts, [*starts[1:], end_of_image], strict=True)]
    return data[:end_of_image] + min(scans, key=len) * copies + data[end_of_image:]


def insert_at(data: bytes, at: int, extra: bytes) -> bytes:
    return data[:at] + extra + data[at:]


def before_each_header_segment(data: bytes, extra: bytes) -> bytes:
    """``extra`` before every header segment after APP0 and before the first scan."""
    for at in reversed(segment_starts(data)[1:]):
        data = insert_at(data, at, extra)
    return data


def before_each_scan(data: bytes, extra: bytes) -> bytes:
    """``extra`` before every SOS marker after the first."""
    first = segments_end(data)
    head, tail = data[: first + 2], data[first + 2 :]
    return head + tail.replace(SOS, extra + SOS)


def after_app0(data: bytes, extra: bytes) -> bytes:
    return insert_at(data, segment_starts(data)[1], extra)


def exif_holding(jpeg: bytes) -> bytes:
    """An APP1 segment holding ``jpeg`` as an EXIF thumbnail would (libjpeg skips it by its length)."""
    payload = b"Exif\x00\x00" + jpeg
    return b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload


def arithmetic(data: bytes) -> bytes:
    """The file with its progressive Huffman frame (SOF2) marked progressive arithmetic (SOF10):
    libjpeg-turbo decodes it, entropy data read as arithmetic codes, tables from DAC defaults."""
    sof = data.find(b"\xff\xc2")
    return data[:sof] + b"\xff\xca" + data[sof + 2 :]


def twelve_bit(data: bytes) -> bytes:
    """The file with its frame's sample precision set to 12 bits."""
    sof = data.find(b"\xff\xc2")
    return data[: sof + 4] + b"\x0c" + data[sof + 5 :]


HIDING_PLACES: dict[str, Callable[[bytes], bytes]] = {
    # The reported hole: one byte between APP0 and DQT. libjpeg's next_marker skips it (a warning).
    "junk-after-app0": lambda bomb: after_app0(bomb, b"\x00"),
    "junk-before-every-segment": lambda bomb: before_each_header_segment(bomb, b"\x00\x7f"),
    "junk-before-every-scan": lambda bomb: before_each_scan(bomb, b"\x13"),
    "fill-bytes-before-every-segment": lambda bomb: before_each_header_segment(bomb, b"\xff\xff\xff"),
    # FF 00 outside entropy data: junk to libjpeg, a zero-length marker to a naive walker.
    "stuffed-ff00-after-app0": lambda bomb: after_app0(bomb, b"\xff\x00"),
    # Lengths below 2: libjpeg skips only the length field, a naive walker jumps elsewhere.
    "app5-of-length-0": lambda bomb: after_app0(bomb, b"\xff\xe5\x00\x00\x00\x00"),
    "comment-of-length-1": lambda bomb: after_app0(bomb, b"\xff\xfe\x00\x01"),
    "restart-markers-in-the-header": lambda bomb: before_each_header_segment(bomb, b"\xff\xd0"),
    # A restart interval of one MCU, and restart markers between all the scans.
    "restart-interval-and-markers": lambda bomb: before_each_scan(
        after_app0(bomb, b"\xff\xdd\x00\x04\x00\x01"), b"\xff\xd3"
    ),
    "tem-markers-between-scans": lambda bomb: before_each_scan(bomb, b"\xff\x01"),
    "dnl-after-the-first-scan": lambda bomb: insert_at(
        bomb, bomb.find(SOS, segments_end(bomb) + 2), b"\xff\xdc\x00\x04\x01\x00"
    ),
    # A thumbnail with scans of its own in APP1, then junk: the main image's scans must still count.
    "exif-thumbnail-with-scans-then-junk": lambda bomb: after_app0(
        bomb, exif_holding(scan_bomb(64, 200)) + b"\x00"
    ),
    "arithmetic-coding": lambda bomb: after_app0(arithmetic(bomb), b"\x00"),
}
"""Ways to hide a bomb's scans from a counter that does not read the file as libjpeg does: each
variant is still a JPEG that Pillow opens and libjpeg decodes, every scan of it."""

DECODER_REFUSES: dict[str, Callable[[bytes], bytes]] = {
    "second-soi-after-app0": lambda bomb: after_app0(bomb, SOI),  # libjpeg: duplicate SOI, an error
    "twelve-bit": twelve_bit,  # Pillow opens 8-bit JPEGs only
}
"""Bombs the decoder refuses before any scan: refused, whatever the reason."""


def segment_flood(segments: int, *, size: int = 64) -> bytes:
    """A small JPEG after ``segments`` empty comment segments (4 bytes each): within every limit
    that can be counted before decoding, yet Pillow's header parser and the scan counter walk each
    segment in Python, about a microsecond apiece. 2,000,000 segments: 8 MB, seconds of CPU."""
    picture = io.BytesIO()
    photo_like(size, size).save(picture, format="JPEG", quality=80)
    return SOI + b"\xff\xfe\x00\x02" * segments + picture.getvalue()[2:]


def chunk_flood(chunks: int, *, size: int = 64) -> bytes:
    """A small PNG with ``chunks`` empty private chunks before its pixels (12 bytes each), each one
    read, CRC-checked and dispatched by Pillow in Python."""
    picture = io.BytesIO()
    photo_like(size, size).save(picture, format="PNG")
    data = picture.getvalue()
    pixels_at = data.find(b"IDAT") - 4
    empty = struct.pack(">I", 0) + b"prVt" + struct.pack(">I", zlib.crc32(b"prVt"))
    return data[:pixels_at] + empty * chunks + data[pixels_at:]
