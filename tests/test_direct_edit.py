"""One direct-edit flow and one encoding: an output carries the same metadata whichever way it came
(the CLI, RunPod's direct input, the worker; the worker adds the request's id), in each format:
PNG text chunks, EXIF and XMP (docs/decisions/0081)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from typer.testing import CliRunner

from processor import composition
from processor.cli import app as cli_app
from processor.composition import build_runpod_handler
from processor.domain.ports.editor import Editor
from processor.domain.rules import OutputFormat
from processor.settings import load_settings
from processor.testing import (
    InMemoryJobQueue,
    InMemoryObjectStorage,
    StandInEditor,
    eventually,
    running_worker,
)
from tests.conftest import DEADLINE, png_bytes
from tests.embedded import embedded, parameters_in

REQUEST = {"prompt": "make it blue", "negative_prompt": "fog", "num_inference_steps": 3, "seed": 7}
SUFFIXES = {"png": "png", "webp": "webp", "jpeg": "jpg"}


def via_runpod(fmt: OutputFormat) -> dict[str, str]:
    handler = build_runpod_handler(load_settings(), StandInEditor(), report=lambda job, update: None)
    image = base64.b64encode(png_bytes()).decode()
    output = asyncio.run(handler({"id": "job", "input": {**REQUEST, "output_format": fmt, "image": image}}))
    assert output["output_format"] == fmt
    return parameters_in(base64.b64decode(output["image"]), fmt)


def via_cli(fmt: OutputFormat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    def build_editor(settings: object) -> Editor:
        return StandInEditor()

    monkeypatch.setattr(composition, "build_editor", build_editor)
    image, out = tmp_path / "in.png", tmp_path / f"out.{SUFFIXES[fmt]}"  # the suffix sets the format
    image.write_bytes(png_bytes())
    options = ["--prompt", "make it blue", "--negative-prompt", "fog", "--steps", "3", "--seed", "7"]
    result = CliRunner().invoke(cli_app, ["edit", "--image", str(image), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return parameters_in(out.read_bytes(), fmt)


def via_worker(fmt: OutputFormat) -> dict[str, str]:
    async def main() -> dict[str, str]:
        storage = InMemoryObjectStorage()
        queue = InMemoryJobQueue(storage=storage)
        storage.put("edit-inputs", "u/in.png", png_bytes())
        request_id = queue.enqueue(input_paths=["u/in.png"], output_format=fmt, **REQUEST)
        async with running_worker(queue, storage, StandInEditor()):
            await eventually(
                lambda: queue.row(request_id).status == "succeeded", what="the edit", timeout=DEADLINE
            )
            row = queue.row(request_id)
            assert row.output_path is not None and row.output_path.endswith(f"/{request_id}.{SUFFIXES[fmt]}")
            stored = storage.get("edit-outputs", row.output_path)
            assert stored is not None
            assert stored.content_type == f"image/{fmt}"
            text = parameters_in(stored.data, fmt)
        assert text.pop("request_id") == str(request_id)
        return text

    return asyncio.run(main())


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_every_way_writes_the_same_generation_parameters(
    fmt: OutputFormat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runpod, cli, worker = via_runpod(fmt), via_cli(fmt, tmp_path, monkeypatch), via_worker(fmt)
    assert runpod == cli == worker
    assert (runpod["prompt"], runpod["negative_prompt"], runpod["seed"], runpod["num_inference_steps"]) == (
        "make it blue",
        "fog",
        "7",
        "3",
    )


def test_an_edit_is_labelled_an_edit_and_a_creation_a_creation() -> None:
    handler = build_runpod_handler(load_settings(), StandInEditor(), report=lambda job, update: None)
    image = base64.b64encode(png_bytes()).decode()
    edited = asyncio.run(handler({"id": "edit", "input": {"prompt": "blue", "image": image}}))
    created = asyncio.run(handler({"id": "create", "input": {"prompt": "a cat", "width": 64, "height": 64}}))
    sources = "http://cv.iptc.org/newscodes/digitalsourcetype/"
    assert (
        embedded(base64.b64decode(edited["image"])).source == f"{sources}compositeWithTrainedAlgorithmicMedia"
    )
    assert embedded(base64.b64decode(created["image"])).source == f"{sources}trainedAlgorithmicMedia"
