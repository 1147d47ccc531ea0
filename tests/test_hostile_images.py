"""Crafted images: whatever the bytes, decoding ends quickly in an image or a reason code.

The mutation corpus is deterministic (seeded), so a failure names a reproducible input; the files
under ``tests/corpus/`` are inputs this fuzzing found that made Pillow raise other exceptions.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from processor.devtools.hostile_images import (
    DECODER_REFUSES,
    EOI,
    HIDING_PLACES,
    TINY_AC_SCAN,
    exif_holding,
    progressive_jpeg,
    scan_bomb,
    with_repeated_scan,
)
from processor.domain.errors import InvalidInput
from processor.domain.images import ImageLimits, decode_image, jpeg_scan_count
from processor.domain.rules import JPEG_MAX_SCANS

CORPUS = Path(__file__).parent / "corpus"


def test_a_jpeg_with_thousands_of_scans_is_refused_before_decoding() -> None:
    crafted = with_repeated_scan(progressive_jpeg(), 3000)
    assert len(crafted) < 1_000_000  # small in bytes: only the scan count gives it away
    with pytest.raises(InvalidInput) as refused:
        decode_image(crafted, ImageLimits())
    assert refused.value.reason == "too_many_scans"


def test_scan_work_is_bounded_by_scans_times_pixels() -> None:
    # Few enough scans for a small picture, too many for a large one.
    assert decode_image(
        with_repeated_scan(progressive_jpeg(64), JPEG_MAX_SCANS - 20), ImageLimits(min_side=1)
    )
    large = with_repeated_scan(progressive_jpeg(2048), 70)  # 80 scans × 4.2 MP
    with pytest.raises(InvalidInput) as refused:
        decode_image(large, ImageLimits())
    assert refused.value.reason == "too_many_scans"


def test_ordinary_jpegs_pass_and_marker_bytes_inside_header_segments_are_not_counted() -> None:
    plain = progressive_jpeg()
    assert jpeg_scan_count(plain) == 10  # libjpeg's simple progression for colour images
    decode_image(plain, ImageLimits())
    # A comment segment (as an EXIF thumbnail would) holding FF DA: skipped with its segment.
    payload = b"\xff\xda" * 50
    commented = plain[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + plain[2:]
    assert jpeg_scan_count(commented) == 10
    decode_image(commented, ImageLimits())
    baseline = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(baseline, format="JPEG")
    assert jpeg_scan_count(baseline.getvalue()) == 1


@pytest.mark.parametrize("place", sorted(HIDING_PLACES))
def test_a_scan_bomb_is_refused_wherever_its_scans_hide(place: str) -> None:
    # Issue 22: one junk byte after APP0 made the counter stop at 0 while libjpeg decoded every scan.
    crafted = HIDING_PLACES[place](scan_bomb(256, 3000))
    assert jpeg_scan_count(crafted) >= 3000
    with pytest.raises(InvalidInput) as refused:
        decode_image(crafted, ImageLimits())
    assert refused.value.reason == "too_many_scans"


@pytest.mark.parametrize("place", sorted(HIDING_PLACES))
def test_each_hiding_place_is_a_jpeg_whose_every_scan_is_decoded_and_counted(place: str) -> None:
    # Under the limit, so it decodes: the variants are JPEGs to Pillow and libjpeg, not garbage they
    # refuse, and the count is libjpeg's (10 scans of the picture + the 80 added; checked against
    # djpeg -verbose's trace of each).
    crafted = HIDING_PLACES[place](scan_bomb(64, JPEG_MAX_SCANS - 20))
    assert jpeg_scan_count(crafted) == JPEG_MAX_SCANS - 10
    assert decode_image(crafted, ImageLimits(min_side=1)).size == (64, 64)


@pytest.mark.parametrize("trick", sorted(DECODER_REFUSES))
def test_a_scan_bomb_the_decoder_refuses_anyway_is_refused(trick: str) -> None:
    with pytest.raises(InvalidInput):
        decode_image(DECODER_REFUSES[trick](scan_bomb(256, 3000)), ImageLimits())


def test_scans_the_decoder_never_reads_are_not_counted() -> None:
    # libjpeg stops at EOI, and skips an EXIF thumbnail (APP1) by its length, whatever it holds.
    after_the_end = progressive_jpeg() + TINY_AC_SCAN * 3000 + EOI
    assert jpeg_scan_count(after_the_end) == 10
    decode_image(after_the_end, ImageLimits())
    plain = progressive_jpeg()
    thumbnail_bomb = plain[:2] + exif_holding(scan_bomb(64, 3000)) + plain[2:]
    assert jpeg_scan_count(thumbnail_bomb) == 10
    decode_image(thumbnail_bomb, ImageLimits())


@pytest.mark.parametrize(
    "path", sorted(CORPUS.glob("scan-bomb-*")), ids=lambda path: path.name.removeprefix("scan-bomb-")
)
def test_the_scan_bombs_kept_in_the_corpus_are_refused(path: Path) -> None:
    with pytest.raises(InvalidInput) as refused:
        decode_image(path.read_bytes(), ImageLimits(min_side=1))
    assert refused.value.reason == "too_many_scans"


def test_the_corpus_keeps_a_file_for_every_hiding_place() -> None:
    kept = {path.name for path in CORPUS.glob("scan-bomb-*")}
    assert kept == {f"scan-bomb-{place}.jpg" for place in HIDING_PLACES}


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*")), ids=lambda path: path.name)
def test_inputs_fuzzing_found_are_decoded_or_refused_with_a_reason(path: Path) -> None:
    try:
        image = decode_image(path.read_bytes(), ImageLimits(min_side=1))
    except InvalidInput:
        return
    assert image.mode == "RGB"


def seeds() -> dict[str, bytes]:
    image = Image.new("RGB", (64, 48), "red")
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "maker"
    exif[0x0131] = "software"
    exif[0x8769] = {0x9003: "2020:01:01 00:00:00"}
    exif[0x8825] = {1: "N", 2: (1.0, 2.0, 3.0)}
    xmp = (
        b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
        b"<rdf:Description xmlns:tiff='http://ns.adobe.com/tiff/1.0/' tiff:Orientation='6'/></rdf:RDF></x:xmpmeta>"
    )
    out = {}
    for name, fmt, options in [
        ("png", "PNG", {}),
        ("jpeg", "JPEG", {"quality": 80}),
        ("progressive-jpeg", "JPEG", {"progressive": True}),
        ("webp", "WEBP", {"quality": 80}),
        ("lossless-webp", "WEBP", {"lossless": True}),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, exif=exif.tobytes(), xmp=xmp, **options)
        out[name] = buffer.getvalue()
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: flip bytes, insert bytes, truncate, duplicate a slice, flip bytes inside the EXIF block."""
    mutated = bytearray(data)
    operation = rng.randrange(5)
    exif_at = max(data.find(marker) for marker in (b"EXIF", b"Exif", b"II*", b"MM\x00*"))
    if operation == 4 and exif_at >= 0:
        for _ in range(rng.randint(1, 3)):
            mutated[min(len(mutated) - 1, exif_at + rng.randrange(8, 120))] = rng.randrange(256)
    elif operation in (0, 4):
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    elif operation == 1:
        at = rng.randrange(len(mutated))
        mutated[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif operation == 2:
        mutated = mutated[: rng.randrange(1, len(mutated))]
    else:
        start = rng.randrange(len(mutated))
        at = rng.randrange(len(mutated))
        mutated[at:at] = mutated[start : start + rng.randint(1, 64)]
    return bytes(mutated)


@pytest.mark.parametrize("seed", [2, 4])
def test_mutated_png_jpeg_and_webp_give_an_image_or_a_reason_code(seed: int) -> None:
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    for name, data in seeds().items():
        for case in range(400):
            mutated = mutate(data, rng)
            try:
                image = decode_image(mutated, ImageLimits(min_side=1))
            except InvalidInput as refused:
                outcomes[refused.reason] += 1
                continue
            except Exception as exc:
                raise AssertionError(f"{name} mutation {case} (seed {seed}) raised {exc!r}") from exc
            assert image.mode == "RGB"
            outcomes["decoded"] += 1
    # The corpus exercises both sides: some mutations still decode, most are refused.
    assert outcomes["decoded"] > 100 and sum(outcomes.values()) - outcomes["decoded"] > 100, outcomes


def test_the_cli_refuses_a_crafted_jpeg_with_its_reason_and_no_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from processor.cli import app

    crafted = tmp_path / "scans.jpg"
    crafted.write_bytes(with_repeated_scan(progressive_jpeg(), 3000))
    result = CliRunner().invoke(
        app, ["edit", "--image", str(crafted), "--prompt", "x", "--out", str(tmp_path / "out.png")]
    )
    assert result.exit_code == 2
    assert "too_many_scans" in result.output and "Traceback" not in result.output
