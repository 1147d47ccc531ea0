"""One direct-edit flow and one encoding: an output carries the same PNG metadata whichever way it came
(the CLI, RunPod's direct input, the worker; the worker adds the request's id)."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from processor import composition
from processor.cli import app as cli_app
from processor.composition import build_runpod_handler
from processor.domain.ports.editor import Editor
from processor.settings import load_settings
from processor.testing import (
    InMemoryJobQueue,
    InMemoryObjectStorage,
    StandInEditor,
    eventually,
    running_worker,
)
from tests.conftest import png_bytes

REQUEST = {"prompt": "make it blue", "negative_prompt": "fog", "num_inference_steps": 3, "seed": 7}


def text_of(data: bytes) -> dict[str, str]:
    return dict(Image.open(io.BytesIO(data)).text)  # type: ignore[attr-defined]


def via_runpod() -> dict[str, str]:
    handler = build_runpod_handler(load_settings(), StandInEditor(), report=lambda job, update: None)
    output = asyncio.run(
        handler({"id": "job", "input": {**REQUEST, "image": base64.b64encode(png_bytes()).decode()}})
    )
    return text_of(base64.b64decode(output["image"]))


def via_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    def build_editor(settings: object) -> Editor:
        return StandInEditor()

    monkeypatch.setattr(composition, "build_editor", build_editor)
    image, out = tmp_path / "in.png", tmp_path / "out.png"
    image.write_bytes(png_bytes())
    options = ["--prompt", "make it blue", "--negative-prompt", "fog", "--steps", "3", "--seed", "7"]
    result = CliRunner().invoke(cli_app, ["edit", "--image", str(image), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return text_of(out.read_bytes())


def via_worker() -> dict[str, str]:
    async def main() -> dict[str, str]:
        storage = InMemoryObjectStorage()
        queue = InMemoryJobQueue(storage=storage)
        storage.put("edit-inputs", "u/in.png", png_bytes())
        request_id = queue.enqueue(input_paths=["u/in.png"], **REQUEST)
        async with running_worker(queue, storage, StandInEditor()):
            await eventually(lambda: queue.row(request_id).status == "succeeded", timeout=30, what="the edit")
            row = queue.row(request_id)
            assert row.output_path is not None
            stored = storage.get("edit-outputs", row.output_path)
            assert stored is not None
            text = text_of(stored.data)
        assert text.pop("request_id") == str(request_id)
        return text

    return asyncio.run(main())


def test_every_way_writes_the_same_generation_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runpod, cli, worker = via_runpod(), via_cli(tmp_path, monkeypatch), via_worker()
    assert runpod == cli == worker
    assert (runpod["prompt"], runpod["negative_prompt"], runpod["seed"], runpod["num_inference_steps"]) == (
        "make it blue",
        "fog",
        "7",
        "3",
    )
