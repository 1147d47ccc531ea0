"""The RunPod handler: direct edits, processing a row by id, bad input, progress, and the SDK's local test mode."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from processor.composition import build_runpod_handler
from processor.domain.ports.editor import Editor
from processor.settings import load_settings
from tests.conftest import Harness, StorageServer, png_bytes

Row = dict[str, Any]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def progress() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def run_job(tiny_editor: Editor, progress: list[dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    handler = build_runpod_handler(
        load_settings(), tiny_editor, report=lambda job, update: progress.append(update)
    )

    def run(job_input: Any, **settings: Any) -> dict[str, Any]:
        chosen = (
            build_runpod_handler(
                load_settings(**settings), tiny_editor, report=lambda j, u: progress.append(u)
            )
            if settings
            else handler
        )
        return asyncio.run(chosen({"id": "job-1", "input": job_input}))

    return run


def test_direct_edit_returns_a_png_seed_and_timings(
    run_job: Callable[..., dict[str, Any]], progress: list[dict[str, Any]]
) -> None:
    output = run_job(
        {"prompt": "make it blue", "image": b64(png_bytes()), "num_inference_steps": 3, "seed": 9}
    )
    image = Image.open(io.BytesIO(base64.b64decode(output["image"])))
    assert image.format == "PNG" and image.size == (output["width"], output["height"])
    assert output["seed"] == 9
    assert {"prompt_encoding", "denoising", "decoding"} <= set(output["timings"])
    assert [p["step"] for p in progress] == [1, 2, 3]


def test_same_seed_same_image(run_job: Callable[..., dict[str, Any]]) -> None:
    job = {
        "prompt": "x",
        "images": [b64(png_bytes()), b64(png_bytes((40, 64)))],
        "num_inference_steps": 2,
        "seed": 3,
    }
    assert run_job(job)["image"] == run_job(job)["image"]


@pytest.mark.parametrize(
    "job_input, code",
    [
        ({"image": b64(png_bytes())}, "invalid_prompt"),
        ({"prompt": "x", "base": "plasma"}, "invalid_parameter"),
        ({"prompt": "x", "width": 50, "height": 64}, "invalid_size"),
        ({"prompt": "x", "images": "not a list"}, "invalid_parameter"),
        ({"prompt": "x", "image": "%%%"}, "invalid_base64"),
        ({"prompt": "x", "image": b64(png_bytes()[:60])}, "truncated_image"),
        ({"prompt": "x", "images": [b64(png_bytes())] * 4}, "too_many_images"),
        ({"prompt": "x", "image": b64(png_bytes()), "num_inference_steps": "many"}, "invalid_parameter"),
        ({"edit_request_id": "not-a-uuid"}, "invalid_request"),
        ("not an object", "invalid_request"),
    ],
)
def test_bad_input_returns_an_error(
    run_job: Callable[..., dict[str, Any]], job_input: Any, code: str
) -> None:
    output = run_job(job_input)
    assert output["error_code"] == code
    assert output["error"].startswith(code)


def test_processes_a_row_by_id_like_the_worker(
    run_job: Callable[..., dict[str, Any]],
    start_processor: Callable[..., Harness],
    database_url: str,
    storage_server: StorageServer,
    make_user: Callable[[], uuid.UUID],
    progress: list[dict[str, Any]],
) -> None:
    harness = start_processor(listen=False, sweep_interval_seconds=3600)  # only to use its app-side helpers
    user = make_user()
    path = harness.upload(user, "in.png", png_bytes())
    request_id = harness.insert(user, [path], num_inference_steps=2)
    harness.served.stop()  # the GPU lives on RunPod now: nothing else may claim the row

    settings = {
        "database_url": database_url,
        "supabase_url": storage_server.url,
        "supabase_service_role_key": storage_server.service_key,
        "heartbeat_interval_seconds": 0.5,
    }
    output = run_job({"edit_request_id": str(request_id)}, **settings)

    assert output == {"edit_request_id": str(request_id), "status": "succeeded"}
    row = harness.row(request_id)
    assert row["status"] == "succeeded" and harness.output_exists(row)
    assert progress, "progress reached RunPod"
    assert run_job({"edit_request_id": str(request_id)}, **settings)["status"] == "not_claimed"


def sdk_local_test(tiny_model_dir: Path, job_input: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MODEL_ID": str(tiny_model_dir),
        "DEVICE": "cpu",
        "WARMUP": "false",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    return subprocess.run(
        [sys.executable, "-m", "processor", "runpod", "--test_input", json.dumps({"input": job_input})],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_sdks_local_test_mode_runs_the_handler(tiny_model_dir: Path) -> None:
    ok = sdk_local_test(
        tiny_model_dir, {"prompt": "make it blue", "image": b64(png_bytes()), "num_inference_steps": 2}
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "completed successfully" in ok.stdout + ok.stderr

    bad = sdk_local_test(tiny_model_dir, {"prompt": "make it blue", "image": "%%%"})
    assert bad.returncode == 1
    assert "invalid_base64" in bad.stdout + bad.stderr
