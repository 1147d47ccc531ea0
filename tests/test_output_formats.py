"""Output formats: the request's format (or the deployment's), the object's name and content type, and the
answers that carry the image (REST ``wait=true``, MCP) saying what it is."""

from __future__ import annotations

import base64
import io
import json
import re
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from processor.domain import rules
from processor.testing import StandInEditor
from tests.conftest import Harness, png_bytes
from tests.embedded import PILLOW_FORMATS, parameters_in
from tests.test_mcp_tools import call_over_http, text_of

ROOT = Path(__file__).resolve().parent.parent


def auth(harness: Harness, user: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.storage.token(user)}"}


def test_a_request_that_names_no_format_gets_the_deployments(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(editor=StandInEditor(), output_format="jpeg", output_quality=60)
    user = make_user()
    path = harness.upload(user, "in.png", png_bytes())
    asked: dict[str, dict[str, object]] = {
        "default": {},
        "png": {"output_format": "png", "output_quality": 30},  # PNG ignores a quality
        "webp": {"output_format": "webp", "output_quality": 30},
        "quality only": {"output_quality": 95},
    }
    ids = {name: harness.insert(user, [path], **columns) for name, columns in asked.items()}
    rows = {name: harness.wait_status(request_id, "succeeded") for name, request_id in ids.items()}
    encodings = {
        name: (
            row["output_path"].rsplit(".", 1)[1],
            row["result"]["output_format"],
            row["result"].get("output_quality"),
        )
        for name, row in rows.items()
    }
    assert encodings == {
        "default": ("jpg", "jpeg", 60),
        "png": ("png", "png", None),
        "webp": ("webp", "webp", 30),
        "quality only": ("jpg", "jpeg", 95),
    }
    # The columns keep what the request said: null stays the deployment's, whatever it becomes.
    assert (rows["default"]["output_format"], rows["default"]["output_quality"]) == (None, None)
    for name, row in rows.items():
        stored = harness.output(row)
        fmt = row["result"]["output_format"]
        assert (
            stored.headers["content-type"] == rules.OUTPUT_MEDIA_TYPES[fmt] == row["result"]["media_type"]
        ), name
        assert parameters_in(stored.content, fmt)["request_id"] == str(row["id"])


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_rest_wait_answers_with_the_image_in_its_format_and_names_its_media_type(
    fmt: str, start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True, editor=StandInEditor())
    user = make_user()
    body = {"prompt": "make it blue", "image": base64.b64encode(png_bytes()).decode(), "output_format": fmt}
    response = httpx.post(
        f"{harness.served.url}/v1/edits?wait=true&timeout=60",
        json=body,
        headers=auth(harness, user),
        timeout=90,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["image_media_type"] == f"image/{fmt}" == answer["result"]["media_type"]
    assert parameters_in(base64.b64decode(answer["image"]), fmt)["prompt"] == "make it blue"
    again = httpx.get(f"{harness.served.url}/v1/edits/{answer['id']}?wait=true", headers=auth(harness, user))
    assert again.json()["image_media_type"] == f"image/{fmt}"
    # The signed URL serves it with its content type.
    served = httpx.get(answer["output_url"])
    assert served.headers["content-type"] == f"image/{fmt}"


def test_multipart_names_the_format_as_a_form_field(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True, editor=StandInEditor())
    response = httpx.post(
        f"{harness.served.url}/v1/edits",
        data={"prompt": "make it blue", "output_format": "jpeg", "output_quality": "55"},
        files=[("image", ("a.png", png_bytes(), "image/png"))],
        headers=auth(harness, make_user()),
    )
    assert response.status_code == 202, response.text
    row = harness.wait_status(uuid.UUID(response.json()["id"]), "succeeded")
    assert (row["output_format"], row["output_quality"], row["result"]["output_quality"]) == ("jpeg", 55, 55)
    assert row["output_path"].endswith(".jpg")


def test_mcp_returns_the_image_in_its_format(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True, editor=StandInEditor())
    image = base64.b64encode(png_bytes()).decode()
    result = call_over_http(
        harness,
        harness.storage.token(make_user()),
        "edit_image",
        {"prompt": "make it blue", "image_base64": image, "output_format": "webp", "output_quality": 80},
    )
    assert not result.is_error, text_of(result)
    [picture] = [item for item in result.content if item.type == "image"]
    assert picture.mime_type == "image/webp"
    assert Image.open(io.BytesIO(base64.b64decode(picture.data))).format == PILLOW_FORMATS["webp"]
    assert json.loads(text_of(result))["result"]["output_quality"] == 80


def test_the_output_bucket_takes_every_format_the_processor_writes(db: object) -> None:
    media_types = set(rules.OUTPUT_MEDIA_TYPES.values())
    row = db.execute(  # type: ignore[attr-defined]
        "select allowed_mime_types from storage.buckets where id = %s", (rules.OUTPUT_BUCKET,)
    ).fetchone()
    assert media_types <= set(row["allowed_mime_types"])
    config = tomllib.loads((ROOT / "supabase" / "config.toml").read_text())
    assert media_types <= set(config["storage"]["buckets"][rules.OUTPUT_BUCKET]["allowed_mime_types"])


def test_the_schema_knows_the_formats_of_the_rules(db: object) -> None:
    check = db.execute(  # type: ignore[attr-defined]
        "select pg_get_constraintdef(oid) as def from pg_constraint where conname = 'edit_requests_output_format_known'"
    ).fetchone()
    assert tuple(re.findall(r"'([a-z]+)'::text", check["def"])) == rules.OUTPUT_FORMATS
