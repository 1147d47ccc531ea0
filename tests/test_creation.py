"""Creating an image without an input: the engine edits a base canvas it builds itself.

Through the engine, the CLI, REST, MCP, the RunPod handler and a row with no inputs, on
the tiny model; plus the schema rules that keep impossible creations out.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from PIL import Image
from typer.testing import CliRunner

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.cli import app
from processor.composition import build_runpod_handler
from processor.domain.errors import InvalidInput
from processor.domain.images import base_canvas
from processor.domain.ports.editor import Editor
from processor.domain.request import EditParams
from processor.settings import load_settings
from tests.conftest import Harness, acting_as
from tests.test_mcp_tools import call_over_http, text_of

Row = dict[str, Any]


def creation(**changes: Any) -> EditParams:
    return EditParams(**{"prompt": "a red fox", "num_inference_steps": 2, "seed": 5, **changes})


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


# --- The canvas and the engine -----------------------------------------------------------------------
def test_canvases_are_blank_in_their_colour_or_noise_from_the_seed() -> None:
    blank = base_canvas("blank", 48, 32, seed=1, colour="#ff8000")
    assert blank.size == (48, 32) and set(blank.getdata()) == {(255, 128, 0)}
    noise = base_canvas("noise", 48, 32, seed=1)
    assert (pixels(noise) == pixels(base_canvas("noise", 48, 32, seed=1))).all()
    assert (pixels(noise) != pixels(base_canvas("noise", 48, 32, seed=2))).any()
    assert len(set(noise.getdata())) > 1000  # noise, not a flat colour


@pytest.mark.parametrize("base", ["blank", "noise"])
def test_creation_is_reproducible_with_a_fixed_seed(tiny_editor: DiffusersEditor, base: str) -> None:
    first = tiny_editor.edit([], creation(base=base, width=64, height=48))
    second = tiny_editor.edit([], creation(base=base, width=64, height=48))
    assert first.image.size == (64, 48) and first.base == base
    assert (pixels(first.image) == pixels(second.image)).all()
    assert first.metadata()["base"] == base


def test_the_base_shapes_the_result(tiny_editor: DiffusersEditor) -> None:
    blank = tiny_editor.edit([], creation(base="blank", width=64, height=64)).image
    noise = tiny_editor.edit([], creation(base="noise", width=64, height=64)).image
    other_seed = tiny_editor.edit([], creation(base="noise", width=64, height=64, seed=6)).image
    assert (pixels(blank) != pixels(noise)).any()
    assert (pixels(noise) != pixels(other_seed)).any()


def test_without_a_size_the_canvas_is_the_models_native_square(tiny_editor: DiffusersEditor) -> None:
    result = tiny_editor.edit([], creation())
    assert result.image.size == (64, 64)  # the tiny model's area; 1024×1024 for the real one
    assert result.base == "blank"
    assert tiny_editor.edit([Image.new("RGB", (64, 48))], creation()).base is None


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"width": 50, "height": 64}, "invalid_size"),
        ({"width": 64}, "invalid_size"),
        ({"base": "plasma"}, "invalid_parameter"),
        ({"base_color": "red"}, "invalid_parameter"),
    ],
)
def test_bad_creations_are_refused(
    tiny_editor: DiffusersEditor, changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        tiny_editor.edit([], creation(**changes))
    assert caught.value.reason == reason


# --- The ways in -----------------------------------------------------------------------------------
def test_the_cli_creates_without_an_image(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    args = ["edit", "--prompt", "a red fox", "--model", tiny_model_dir, "--device", "cpu", "--steps", "2",
            "--width", "64", "--height", "48", "--base", "noise", "--seed", "8", "--out", out]  # fmt: skip
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.stderr
    metadata = json.loads(result.stdout)
    assert (metadata["base"], metadata["seed"], metadata["width"], metadata["height"]) == ("noise", 8, 64, 48)
    assert Image.open(out).size == (64, 48)
    refused = CliRunner().invoke(app, [str(arg) for arg in [*args[:-6], "--base", "plasma", "--out", out]])
    assert refused.exit_code == 2 and refused.stderr.startswith("error: invalid_parameter: base")


def test_rest_creates_without_an_image(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True)
    user = make_user()
    response = httpx.post(
        f"{harness.served.url}/v1/edits?wait=true&timeout=60",
        json={
            "prompt": "a red fox",
            "num_inference_steps": 2,
            "seed": 3,
            "width": 64,
            "height": 48,
            "base": "noise",
        },
        headers={"Authorization": f"Bearer {harness.storage.token(user)}"},
        timeout=90,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["width"], body["height"]) == ("succeeded", 64, 48)
    assert Image.open(io.BytesIO(base64.b64decode(body["image"]))).size == (64, 48)
    row = harness.row(uuid.UUID(body["id"]))
    assert row["input_paths"] == [] and row["base"] == "noise" and row["result"]["base"] == "noise"


def test_mcp_creates_without_an_image(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True)
    token = harness.storage.token(make_user())
    result = call_over_http(
        harness,
        token,
        "edit_image",
        {"prompt": "a red fox", "num_inference_steps": 2, "width": 48, "height": 64, "base_color": "#204080"},
    )
    assert not result.is_error, text_of(result)
    [picture] = [item for item in result.content if item.type == "image"]
    assert Image.open(io.BytesIO(base64.b64decode(picture.data))).size == (48, 64)
    assert json.loads(text_of(result))["result"]["base"] == "blank"


def test_runpod_creates_without_an_image(tiny_editor: Editor) -> None:
    handler = build_runpod_handler(load_settings(), tiny_editor, report=lambda job, update: None)
    job = {
        "prompt": "a red fox",
        "num_inference_steps": 2,
        "seed": 4,
        "width": 64,
        "height": 32,
        "base": "noise",
    }
    first = asyncio.run(handler({"id": "job-1", "input": job}))
    second = asyncio.run(handler({"id": "job-2", "input": job}))
    assert "error" not in first, first
    assert Image.open(io.BytesIO(base64.b64decode(first["image"]))).size == (64, 32)
    assert first["image"] == second["image"]  # fixed seed, noise base included


def test_a_row_without_inputs_is_queued_at_once_and_created(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor()
    user = make_user()
    request_id = harness.insert(user, [], width=64, height=48, base="noise", seed=12)
    row = harness.wait_status(request_id, "succeeded", "failed")
    assert row["status"] == "succeeded", row["error"]
    assert (row["result"]["width"], row["result"]["height"], row["result"]["seed"]) == (64, 48, 12)
    assert harness.output_exists(row)


def test_an_edit_row_can_choose_its_output_size(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    from tests.conftest import png_bytes

    harness = start_processor()
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())], width=32, height=48)
    row = harness.wait_status(request_id, "succeeded", "failed")
    assert row["status"] == "succeeded" and (row["result"]["width"], row["result"]["height"]) == (32, 48)
    assert "base" not in row["result"]


# --- The schema ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "columns, constraint",
    [
        ({"input_paths": []}, "edit_requests_inputs_or_size"),
        ({"input_paths": [], "width": 64}, "edit_requests_size_valid"),
        ({"input_paths": [], "width": 50, "height": 64}, "edit_requests_size_valid"),
        ({"input_paths": [], "width": 4096, "height": 4096}, "edit_requests_size_valid"),
        ({"input_paths": [], "width": 64, "height": 64, "base": "plasma"}, "edit_requests_base_known"),
        ({"input_paths": [], "width": 64, "height": 64, "base_color": "red"}, "edit_requests_base_color_hex"),
    ],
)
def test_impossible_creations_are_refused_at_insert(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID], columns: dict[str, Any], constraint: str
) -> None:
    user = make_user()
    values = {"prompt": "a red fox", **columns}
    with pytest.raises(psycopg.errors.CheckViolation) as caught, acting_as(db, "authenticated", user) as conn:
        conn.execute(
            f"insert into edit_requests ({', '.join(values)}) values ({', '.join(['%s'] * len(values))})",
            tuple(values.values()),
        )
    assert caught.value.diag.constraint_name == constraint
