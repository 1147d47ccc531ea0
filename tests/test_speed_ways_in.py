"""Speed presets and request LoRAs through every way in: the CLI, a row, REST and RunPod
(tiny model and tiny Lightning-layout LoRAs on CPU; the real worker, queue and storage)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.loras import AllowedLora, LoraSource
from processor.adapters.diffusers.tiny_model import save_tiny_lora
from processor.cli import app
from processor.composition import build_runpod_handler
from processor.settings import load_settings
from tests.conftest import Harness, png_bytes, wait_for


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    return {
        "fast": save_tiny_lora(folder / "8.safetensors", seed=8),
        "fastest": save_tiny_lora(folder / "4.safetensors", seed=4),
        "ink": save_tiny_lora(folder / "ink.safetensors", seed=21),
    }


@pytest.fixture(scope="module")
def speedy_editor(tiny_model_dir: Path, lora_files: dict[str, Path]) -> DiffusersEditor:
    return DiffusersEditor.load(
        tiny_model_dir,
        device="cpu",
        lightning={preset: LoraSource.parse(str(lora_files[preset])) for preset in ("fast", "fastest")},  # type: ignore[misc]
        loras={"ink": AllowedLora("ink", LoraSource.parse(str(lora_files["ink"])), scale=0.8)},
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_cli_speed_and_lora_flags(
    tiny_model_dir: Path, lora_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = tmp_path / "in.png"
    photo.write_bytes(png_bytes())
    monkeypatch.setenv("LIGHTNING_8STEP_LORA", str(lora_files["fast"]))
    monkeypatch.setenv("LIGHTNING_4STEP_LORA", str(lora_files["fastest"]))
    monkeypatch.setenv("LORAS", json.dumps({"ink": {"source": str(lora_files["ink"]), "scale": 0.8}}))
    base = [
        "edit",
        "--image",
        str(photo),
        "--prompt",
        "blue",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
    ]
    for speed, steps in (("fast", 8), ("fastest", 4)):
        result = CliRunner().invoke(
            app, [*base, "--out", str(tmp_path / f"{speed}.png"), "--speed", speed, "--lora", "ink=0.5"]
        )
        assert result.exit_code == 0, result.stderr
        metadata = json.loads(result.stdout)
        assert (metadata["speed"], metadata["num_inference_steps"], metadata["true_cfg_scale"]) == (
            speed,
            steps,
            1.0,
        )
        assert metadata["loras"] == [{"name": "ink", "scale": 0.5}]
    quality = CliRunner().invoke(
        app, [*base, "--out", str(tmp_path / "q.png"), "--steps", "2", "--lora", "ink"]
    )
    assert quality.exit_code == 0, quality.stderr
    assert json.loads(quality.stdout)["loras"] == [{"name": "ink", "scale": 0.8}]
    unknown = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "u.png"), "--lora", "nope"])
    assert unknown.exit_code == 2 and "unknown LoRA" in unknown.stderr
    bad = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b.png"), "--speed", "ludicrous"])
    assert bad.exit_code == 2 and "speed must be one of" in bad.stderr


def test_a_row_with_speed_and_loras_runs_them_and_records_them(
    start_processor: Callable[..., Harness],
    make_user: Callable[[], uuid.UUID],
    speedy_editor: DiffusersEditor,
) -> None:
    harness = start_processor(editor=speedy_editor)
    harness.db.execute("insert into edit_loras (name) values ('ink')")
    user = make_user()
    path = harness.upload(user, "in.png", png_bytes())
    request = harness.insert(user, [path], speed="fast", loras=Jsonb([{"name": "ink", "scale": 1.2}]))
    row = harness.wait_status(request, "succeeded", "failed")
    assert row["status"] == "succeeded", row["error"]
    result = row["result"]
    assert (result["speed"], result["num_inference_steps"], result["scheduler"]) == ("fast", 8, "lightning")
    assert result["loras"] == [{"name": "ink", "scale": 1.2}]
    default = harness.wait_status(harness.insert(user, [path]), "succeeded")
    assert (default["result"]["speed"], default["result"]["loras"]) == ("quality", [])


def test_rest_takes_speed_and_loras(
    start_processor: Callable[..., Harness],
    make_user: Callable[[], uuid.UUID],
    speedy_editor: DiffusersEditor,
) -> None:
    api = start_processor(editor=speedy_editor, rest=True)
    api.db.execute("insert into edit_loras (name) values ('ink')")
    user = make_user()
    headers = {"Authorization": f"Bearer {api.storage.token(user)}"}
    body: dict[str, Any] = {
        "prompt": "blue",
        "image": b64(png_bytes()),
        "speed": "fastest",
        "loras": [{"name": "ink"}],
    }
    response = httpx.post(f"{api.served.url}/v1/edits", json=body, headers=headers)
    assert response.status_code == 202, response.text
    status_url = response.json()["status_url"]
    final = wait_for(
        lambda: (
            (r := httpx.get(status_url, headers=headers).json())["status"] in ("succeeded", "failed") and r
        ),
        what="the edit",
    )
    assert final["status"] == "succeeded", final
    assert (final["result"]["speed"], final["result"]["num_inference_steps"]) == ("fastest", 4)
    assert final["result"]["loras"] == [{"name": "ink", "scale": 0.8}]
    refused = httpx.post(
        f"{api.served.url}/v1/edits", json={**body, "loras": [{"name": "nope"}]}, headers=headers
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_lora", refused.text
    bad = httpx.post(f"{api.served.url}/v1/edits", json={**body, "speed": "ludicrous"}, headers=headers)
    assert bad.status_code == 422


def test_runpod_direct_edits_take_speed_and_loras(speedy_editor: DiffusersEditor) -> None:
    handler = build_runpod_handler(load_settings(), speedy_editor, report=lambda job, update: None)
    job = {
        "prompt": "blue",
        "image": b64(png_bytes()),
        "speed": "fast",
        "loras": [{"name": "ink", "scale": 0.3}],
    }
    output = asyncio.run(handler({"id": "job-1", "input": job}))
    assert "error" not in output, output
    assert (output["speed"], output["num_inference_steps"]) == ("fast", 8)
    assert output["loras"] == [{"name": "ink", "scale": 0.3}]
    refused = asyncio.run(handler({"id": "job-2", "input": {**job, "loras": [{"name": "nope"}]}}))
    assert "unknown LoRA" in json.dumps(refused)


def test_mcp_edit_image_takes_speed_and_loras(
    start_processor: Callable[..., Harness],
    make_user: Callable[[], uuid.UUID],
    speedy_editor: DiffusersEditor,
) -> None:
    from tests.test_mcp_tools import call_over_http, text_of

    harness = start_processor(editor=speedy_editor, rest=True)
    harness.db.execute("insert into edit_loras (name) values ('ink')")
    token = harness.storage.token(make_user())
    arguments = {
        "prompt": "blue",
        "image_base64": b64(png_bytes()),
        "speed": "fastest",
        "loras": [{"name": "ink", "scale": 0.4}],
    }
    result = call_over_http(harness, token, "edit_image", arguments)
    assert not result.is_error, text_of(result)
    metadata = json.loads(text_of(result))
    assert (metadata["result"]["speed"], metadata["result"]["num_inference_steps"]) == ("fastest", 4)
    assert metadata["result"]["loras"] == [{"name": "ink", "scale": 0.4}]
    refused = call_over_http(harness, token, "edit_image", {**arguments, "loras": [{"name": "nope"}]})
    assert refused.is_error and "unknown LoRA" in text_of(refused)


def test_cli_takes_the_acceleration_settings_from_the_environment(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = tmp_path / "in.png"
    photo.write_bytes(png_bytes())
    monkeypatch.setenv("STEP_CACHE", "true")
    monkeypatch.setenv("STEP_CACHE_THRESHOLD", "0.3")
    monkeypatch.setenv("ATTENTION_BACKEND", "native")
    args = [
        "edit",
        "--image",
        str(photo),
        "--prompt",
        "blue",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(app, [*args, "--steps", "3", "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.stderr
    model = json.loads(result.stdout)["model"]
    assert (model["step_cache"], model["attention_backend"], model["compile"], model["fp8"]) == (
        0.3,
        "native",
        False,
        False,
    )
    monkeypatch.setenv("FP8", "true")
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "f.png")])
    assert refused.exit_code == 2 and "FP8=true needs a CUDA GPU" in refused.stderr
