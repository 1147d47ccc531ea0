"""``edit-processor edit`` and ``make-tiny-model``: one-shot edits from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from processor.cli import app


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "in.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def edit(model: Path, image: Path, out: Path, *extra: str | Path) -> Result:
    return run("edit", "--image", image, "--prompt", "make it blue", "--model", model, "--device", "cpu",
               "--steps", "2", "--out", out, *extra)  # fmt: skip


def test_an_edit_writes_the_image_and_prints_its_metadata(
    tiny_model_dir: Path, photo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results" / "out.png"
    result = edit(tiny_model_dir, photo, out, "--seed", "42")
    assert result.exit_code == 0, result.stderr
    metadata = json.loads(result.stdout)
    assert (metadata["seed"], metadata["num_inference_steps"], metadata["output_format"]) == (42, 2, "png")
    assert set(metadata["timings"]) >= {"prompt_encoding", "denoising", "decoding", "total"}
    assert metadata["model"]["model_id"] == f"local:{tiny_model_dir.name}"  # a folder, by name only
    written = Image.open(out)
    assert (written.format, written.size) == ("PNG", (metadata["width"], metadata["height"]))
    assert written.text["prompt"] == "make it blue"  # type: ignore[attr-defined]
    assert written.text["seed"] == "42"  # type: ignore[attr-defined]
    # The same seed from a fresh load writes the same bytes.
    again = tmp_path / "again.png"
    assert edit(tiny_model_dir, photo, again, "--seed", "42").exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_several_images_explicit_size_and_webp(tiny_model_dir: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.webp"
    result = edit(tiny_model_dir, photo, out, "--image", photo, "--width", "48", "--height", "32")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["output_format"] == "webp"
    assert Image.open(out).format == "WEBP"
    assert Image.open(out).size == (48, 32)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "1"], "error: invalid_parameter:"),
        (["--width", "50", "--height", "48"], "error: invalid_size:"),
        (["--prompt", " "], "error: invalid_prompt:"),
        (
            ["--output-format", "gif"],
            "error: invalid_parameter: output_format must be one of png, webp, jpeg",
        ),
        (["--output-format", "jpeg"], "error: invalid_parameter: --output-format jpeg but --out out.png"),
        (
            ["--output-quality", "0"],
            "error: invalid_parameter: output_quality must be an integer from 1 to 100",
        ),
        (["--output-quality", "high"], "error: invalid_parameter: output_quality must be an integer"),
        (["--steps", "many"], "error: invalid_parameter: num_inference_steps must be an integer"),
    ],
)
def test_bad_parameters_exit_2_with_the_reason(
    tiny_model_dir: Path, photo: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    result = edit(tiny_model_dir, photo, tmp_path / "out.png", *extra)
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("out.jpg", [], "JPEG"),
        ("out.JPEG", [], "JPEG"),
        ("out.webp", ["--output-format", "webp", "--output-quality", "40"], "WEBP"),
        ("out", ["--output-format", "jpeg"], "JPEG"),  # no suffix: the option says
        ("out", [], "PNG"),  # neither: the deployment's OUTPUT_FORMAT
    ],
)
def test_the_output_suffix_or_option_picks_the_format(
    tiny_model_dir: Path, photo: Path, tmp_path: Path, name: str, options: list[str], expected: str
) -> None:
    out = tmp_path / name
    result = edit(tiny_model_dir, photo, out, *options)
    assert result.exit_code == 0, result.stderr
    assert Image.open(out).format == expected
    assert json.loads(result.stdout)["media_type"] == f"image/{expected.lower()}"


def test_a_suffix_that_names_no_format_is_refused_before_the_model_loads(photo: Path, tmp_path: Path) -> None:
    # No model at all: the refusal must come first (it did not: PNG bytes went into out.gif).
    result = edit(tmp_path / "no-model", photo, tmp_path / "out.gif")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid_parameter: --out out.gif: .gif is not an output format")
    assert not (tmp_path / "out.gif").exists()


def test_a_bad_image_exits_2_with_the_reason(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    result = edit(tiny_model_dir, broken, tmp_path / "out.png")
    assert (result.exit_code, result.stderr.split(":")[:2]) == (2, ["error", " unknown_format"])


@pytest.mark.service  # the command in a process of its own
def test_a_missing_model_exits_2(photo: Path, tmp_path: Path) -> None:
    result = edit(tmp_path / "no-model", photo, tmp_path / "out.png")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: configuration_error: cannot load the model")


def test_make_tiny_model_writes_a_loadable_folder(tmp_path: Path) -> None:
    result = run("make-tiny-model", tmp_path / "tiny")
    assert result.exit_code == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "tiny"
    assert json.loads((tmp_path / "tiny" / "model_index.json").read_text())["_class_name"] == (
        "QwenImageEditPlusPipeline"
    )
