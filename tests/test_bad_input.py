"""A corpus of hostile and odd inputs, generated here, through the whole path: each gets a clear
reason (the row failed, or refused at insert), odd-but-valid images succeed, and the next good
request still succeeds."""

from __future__ import annotations

import io
import struct
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image

from tests.conftest import Harness, acting_as, png_bytes


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def bomb() -> bytes:
    """A valid, tiny PNG that declares 40,000 x 40,000 pixels (1.6 gigapixels)."""
    width = height = 40_000

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width // 8 + 1) * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.new("P", (64, 64), color) for color in (1, 2, 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (64, 64), color) for color in ((255, 0, 0), (0, 255, 0))]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)


def huge_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription
    return encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG", exif=exif.tobytes())


FAILING: list[tuple[str, Callable[[], bytes], str]] = [
    ("zero-bytes", lambda: b"", "empty_image"),
    ("truncated-png", lambda: png_bytes()[:60], "truncated_image"),
    (
        "truncated-jpeg",
        lambda: encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:200],
        "truncated_image",
    ),
    ("decompression-bomb", bomb, "too_many_pixels"),
    ("animated-gif", animated_gif, "unknown_format"),
    ("animated-webp", animated_webp, "animated_image"),
    ("text-as-png", lambda: b"#!/bin/sh\necho this is not an image\n" * 20, "unknown_format"),
    ("too-small", lambda: png_bytes((8, 8)), "too_small"),
]

SUCCEEDING: list[tuple[str, Callable[[], bytes]]] = [
    ("cmyk-jpeg", lambda: encode(Image.new("CMYK", (64, 48), (0, 128, 255, 10)), "JPEG")),
    ("16-bit-png", lambda: encode(Image.new("I;16", (64, 48), 40_000), "PNG")),
    ("palette-with-transparency", lambda: encode(Image.new("P", (64, 48), 0), "PNG", transparency=0)),
    ("huge-exif", huge_exif),
]


@pytest.mark.parametrize("name, make, reason", FAILING, ids=[case[0] for case in FAILING])
def test_bad_images_fail_with_their_reason(
    start_processor: Callable[..., Harness],
    make_user: Callable[[], uuid.UUID],
    name: str,
    make: Callable[[], bytes],
    reason: str,
) -> None:
    harness = start_processor()
    user = make_user()
    # Uploaded as the service would allow any bytes; the worker is the one that must refuse them.
    path = f"{user}/{name}.png"
    httpx.post(
        f"{harness.storage.url}/storage/v1/object/edit-inputs/{path}",
        headers={"Authorization": f"Bearer {harness.storage.service_key}"},
        files={"file": (f"{name}.png", make(), "image/png")},
    ).raise_for_status()
    bad = harness.insert(user, [path])
    good = harness.insert(user, [harness.upload(user, "good.png", png_bytes())])

    row = harness.wait_status(bad, "failed", "succeeded")
    assert (row["status"], row["error_code"], row["attempts"]) == ("failed", reason, 1)
    assert row["error"]
    assert harness.wait_status(good, "succeeded", "failed")["status"] == "succeeded"


@pytest.mark.parametrize("name, make", SUCCEEDING, ids=[case[0] for case in SUCCEEDING])
def test_odd_but_valid_images_are_edited(
    start_processor: Callable[..., Harness],
    make_user: Callable[[], uuid.UUID],
    name: str,
    make: Callable[[], bytes],
) -> None:
    harness = start_processor()
    user = make_user()
    content_type = "image/jpeg" if "jpeg" in name or "exif" in name else "image/png"
    request_id = harness.insert(user, [harness.upload(user, f"{name}.img", make(), content_type)])
    row = harness.wait_status(request_id, "succeeded", "failed")
    assert row["status"] == "succeeded", row["error"]


def test_a_missing_object_fails_with_its_reason(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor()
    user = make_user()
    path = harness.upload(user, "soon-gone.png", png_bytes())
    request_id = harness.insert(user, [path], num_inference_steps=2)
    harness.wait_status(request_id, "succeeded")
    # The input disappears; an operator retries the request.
    # As Storage's API does (a plain SQL delete is refused, as on Supabase).
    harness.db.execute("select set_config('storage.allow_delete_query', 'true', false)")
    harness.db.execute("delete from storage.objects where name = %s", (path,))
    harness.db.execute(
        "update edit_requests set status = 'failed', error = 'x', output_path = null, finished_at = now() where id = %s",
        (request_id,),
    )
    harness.db.execute(
        "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (path,)
    )  # row only, no bytes
    harness.db.execute("select retry_edit_request(%s)", (request_id,))
    row = harness.wait_status(request_id, "failed", "succeeded")
    assert (row["status"], row["error_code"]) == ("failed", "missing_object")


# Whichever guard sees it first (the RLS policy or the CHECK constraint) refuses it.
REFUSED_PATH = (psycopg.errors.CheckViolation, psycopg.errors.InsufficientPrivilege)


@pytest.mark.parametrize(
    "columns, error",
    [
        ({"input_paths": ["../../etc/passwd"]}, REFUSED_PATH),
        ({"input_paths": ["{user}/../{other}/a.png"]}, REFUSED_PATH),
        ({"input_paths": ["{other}/a.png"]}, psycopg.errors.InsufficientPrivilege),
        ({"prompt": "x" * 100_000}, psycopg.errors.CheckViolation),
        ({"prompt": "nul\x00byte"}, psycopg.errors.DataError),
        ({"num_inference_steps": 0}, psycopg.errors.CheckViolation),
        ({"num_inference_steps": 10_000}, psycopg.errors.CheckViolation),
        ({"true_cfg_scale": -3}, psycopg.errors.CheckViolation),
        ({"guidance_scale": 1e9}, psycopg.errors.CheckViolation),
    ],
    ids=[
        "dotdot",
        "dotdot-into-other-user",
        "other-users-folder",
        "100k-prompt",
        "nul-prompt",
        "zero-steps",
        "huge-steps",
        "negative-cfg",
        "huge-guidance",
    ],
)
def test_bad_requests_are_refused_at_insert(
    db: psycopg.Connection[dict[str, Any]],
    make_user: Callable[[], uuid.UUID],
    columns: dict[str, Any],
    error: type[Exception],
) -> None:
    user, other = make_user(), make_user()
    values = {"prompt": "make it blue", "input_paths": [f"{user}/a.png"], **columns}
    values["input_paths"] = [p.format(user=user, other=other) for p in values["input_paths"]]
    with pytest.raises(error), acting_as(db, "authenticated", user) as conn:
        conn.execute(
            f"insert into edit_requests ({', '.join(values)}) values ({', '.join(['%s'] * len(values))})",
            tuple(values.values()),
        )
    assert db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 0}
