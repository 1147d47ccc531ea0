"""The edit engine end to end with the tiny model: results, determinism, progress, cancellation, sizes."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.composition import build_editor
from processor.domain.errors import EditCancelled, InvalidInput, ModelError
from processor.domain.images import encode_image
from processor.domain.ports.editor import Editor
from processor.domain.request import EditParams
from processor.domain.rules import MAX_IMAGES
from tests.conftest import DEADLINE


def picture(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def params(**changes: Any) -> EditParams:
    values: dict[str, Any] = {"prompt": "make the sky blue", "num_inference_steps": 2, "seed": 7}
    return EditParams(**{**values, **changes})


@contextmanager
def counting_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Counts ``module``'s forward calls in a one-element list, through a removable torch hook."""
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    handle = module.register_forward_pre_hook(count)
    try:
        yield calls
    finally:
        handle.remove()


def test_the_editor_implements_the_port(tiny_editor: DiffusersEditor) -> None:
    assert isinstance(tiny_editor, Editor)


def test_an_edit_returns_an_rgb_image_and_its_metadata(tiny_editor: DiffusersEditor) -> None:
    result = tiny_editor.edit([picture()], params())
    assert (result.image.mode, result.image.size) == ("RGB", (result.width, result.height))
    assert (result.seed, result.num_inference_steps) == (7, 2)
    assert set(result.timings) == {
        "preprocessing",
        "prompt_encoding",
        "image_encoding",
        "denoising",
        "decoding",
        "postprocessing",
        "total",
    }
    assert all(seconds > 0 for seconds in result.timings.values())
    stages = sum(seconds for stage, seconds in result.timings.items() if stage != "total")
    assert stages <= result.timings["total"]
    assert result.model == tiny_editor.describe()
    assert result.metadata()["timings"] == dict(result.timings)


def test_describe_names_model_device_and_dtype(tiny_editor: DiffusersEditor, tiny_model_dir: Path) -> None:
    described = tiny_editor.describe()
    assert described["model_id"] == f"local:{tiny_model_dir.name}"
    assert (described["device"], described["dtype"], described["revision"]) == ("cpu", "float32", None)
    assert {"diffusers", "transformers", "torch"} <= set(described)


def test_the_same_seed_gives_identical_png_bytes(tiny_editor: DiffusersEditor) -> None:
    first = tiny_editor.edit([picture()], params(seed=123))
    second = tiny_editor.edit([picture()], params(seed=123))
    other = tiny_editor.edit([picture()], params(seed=124))
    assert encode_image(first.image) == encode_image(second.image)
    assert encode_image(first.image) != encode_image(other.image)


def test_a_missing_seed_is_drawn_recorded_and_reproducible(tiny_editor: DiffusersEditor) -> None:
    drawn = tiny_editor.edit([picture()], params(seed=None))
    assert 0 <= drawn.seed < 2**31
    again = tiny_editor.edit([picture()], params(seed=drawn.seed))
    assert encode_image(drawn.image) == encode_image(again.image)


def test_progress_is_reported_once_per_step(tiny_editor: DiffusersEditor) -> None:
    seen: list[tuple[int, int]] = []
    tiny_editor.edit([picture()], params(num_inference_steps=4), on_progress=lambda *step: seen.append(step))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_failing_progress_callback_does_not_fail_the_edit(tiny_editor: DiffusersEditor) -> None:
    def broken(step: int, total: int) -> None:
        raise RuntimeError("the event loop is gone")

    assert tiny_editor.edit([picture()], params(), on_progress=broken).width > 0


def test_cancelling_stops_between_steps_without_decoding(tiny_editor: DiffusersEditor) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def cancel_at_step_two(step: int, total: int) -> None:
        seen.append(step)
        if step == 2:
            cancel.set()

    with counting_calls(tiny_editor.pipeline.vae.decoder) as decodes:
        with pytest.raises(EditCancelled) as caught:
            tiny_editor.edit(
                [picture()], params(num_inference_steps=6), on_progress=cancel_at_step_two, cancel=cancel
            )
        assert (seen, decodes[0]) == ([1, 2], 0)
        assert caught.value.reason == "canceled" and not caught.value.retryable
        # The same hook sees a decode in an edit that is not cancelled, and the editor still works.
        tiny_editor.edit([picture()], params(), cancel=threading.Event())
        assert decodes[0] == 1


def test_cancelling_on_the_last_step_still_skips_the_decode(tiny_editor: DiffusersEditor) -> None:
    cancel = threading.Event()
    with counting_calls(tiny_editor.pipeline.vae.decoder) as decodes, pytest.raises(EditCancelled):
        tiny_editor.edit([picture()], params(), on_progress=lambda step, total: cancel.set(), cancel=cancel)
    assert decodes[0] == 0


def test_an_edit_cancelled_before_it_starts_never_runs_the_model(tiny_editor: DiffusersEditor) -> None:
    cancel = threading.Event()
    cancel.set()
    with counting_calls(tiny_editor.pipeline.text_encoder) as encodes, pytest.raises(EditCancelled):
        tiny_editor.edit([picture()], params(), cancel=cancel)
    assert encodes[0] == 0


@pytest.mark.parametrize("count", [1, 2, 3])
def test_one_to_three_images_are_edited(tiny_editor: DiffusersEditor, count: int) -> None:
    images = [picture(64, 48, seed) for seed in range(count)]
    result = tiny_editor.edit(images, params())
    assert result.image.size == tiny_editor.output_size([image.size for image in images])


def test_more_images_than_supported_are_refused(tiny_editor: DiffusersEditor) -> None:
    with pytest.raises(InvalidInput) as caught:
        tiny_editor.edit([picture()] * (MAX_IMAGES + 1), params())
    assert caught.value.reason == "too_many_images"


def test_the_output_follows_the_aspect_ratio_of_the_last_image(tiny_editor: DiffusersEditor) -> None:
    wide, tall = picture(128, 64), picture(64, 128)
    assert tiny_editor.edit([tall, wide], params()).image.size == (96, 32)  # 64² area at 2:1
    assert tiny_editor.edit([wide, tall], params()).image.size == (32, 96)


def test_an_explicit_size_is_honoured(tiny_editor: DiffusersEditor) -> None:
    assert tiny_editor.edit([picture()], params(width=48, height=32)).image.size == (48, 32)


@pytest.mark.parametrize(
    ("width", "height"),
    [(48, None), (None, 48), (50, 48), (48, 0), (16, 48), (4112, 48), (4096, 2048)],
    ids=[
        "width-only",
        "height-only",
        "not-multiple-of-16",
        "zero",
        "too-small",
        "too-wide",
        "too-many-pixels",
    ],
)
def test_invalid_explicit_sizes_are_refused(
    tiny_editor: DiffusersEditor, width: int | None, height: int | None
) -> None:
    with pytest.raises(InvalidInput) as caught:
        tiny_editor.edit([picture()], params(width=width, height=height))
    assert caught.value.reason == "invalid_size"


def test_an_input_too_elongated_for_the_models_resizing_is_refused(tiny_editor: DiffusersEditor) -> None:
    with pytest.raises(InvalidInput) as caught:
        tiny_editor.edit([picture(2000, 32)], params())
    assert caught.value.reason == "invalid_size"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"prompt": "  "}, "invalid_prompt"),
        ({"prompt": "x" * 4001}, "invalid_prompt"),
        ({"num_inference_steps": 1}, "invalid_parameter"),  # NaN sigmas with Qwen-Image's scheduler
        ({"num_inference_steps": 101}, "invalid_parameter"),
        ({"true_cfg_scale": float("nan")}, "invalid_parameter"),
        ({"true_cfg_scale": 21.0}, "invalid_parameter"),
        ({"guidance_scale": -1.0}, "invalid_parameter"),
        ({"seed": -1}, "invalid_parameter"),
        ({"seed": 2**63}, "invalid_parameter"),
    ],
)
def test_invalid_parameters_are_refused_before_the_model_runs(
    tiny_editor: DiffusersEditor, changes: dict[str, Any], reason: str
) -> None:
    with counting_calls(tiny_editor.pipeline.text_encoder) as encodes, pytest.raises(InvalidInput) as caught:
        tiny_editor.edit([picture()], params(**changes))
    assert (caught.value.reason, encodes[0]) == (reason, 0)


@pytest.mark.parametrize(("scale", "negative", "per_step"), [(4.0, " ", 2), (4.0, "", 2), (1.0, " ", 1)])
def test_true_cfg_runs_whenever_its_scale_is_above_one(
    tiny_editor: DiffusersEditor, scale: float, negative: str, per_step: int
) -> None:
    with counting_calls(tiny_editor.pipeline.transformer) as forwards:
        tiny_editor.edit(
            [picture()], params(num_inference_steps=3, true_cfg_scale=scale, negative_prompt=negative)
        )
    assert forwards[0] == 3 * per_step


def test_inputs_in_other_modes_are_converted(tiny_editor: DiffusersEditor) -> None:
    rgba = picture().convert("RGBA")
    assert tiny_editor.edit([rgba, picture().convert("L")], params()).image.mode == "RGB"


def test_the_engine_matches_the_stock_pipeline_bit_for_bit(
    tiny_editor: DiffusersEditor, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import QwenImageEditPlusPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    from processor.adapters.diffusers.compat import install_mrope_fix

    stock = QwenImageEditPlusPipeline.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    stock.set_progress_bar_config(disable=True)
    install_mrope_fix(stock.text_encoder)
    images = [picture(64, 48, 1), picture(48, 64, 2)]
    ours = tiny_editor.edit(images, params(num_inference_steps=3, seed=5))
    sizing = tiny_editor.sizing
    monkeypatch.setattr(module, "VAE_IMAGE_SIZE", sizing.vae_image_area)
    monkeypatch.setattr(module, "CONDITION_IMAGE_SIZE", sizing.condition_image_area)
    theirs = stock(
        image=images,
        prompt="make the sky blue",
        negative_prompt=" ",
        true_cfg_scale=4.0,
        num_inference_steps=3,
        width=ours.width,
        height=ours.height,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    assert np.array_equal(np.asarray(ours.image), np.asarray(theirs))


def raising_in_transformer(editor: DiffusersEditor, error: Callable[[], BaseException]) -> Any:
    def fail(*_: object) -> None:
        raise error()

    return editor.pipeline.transformer.register_forward_pre_hook(fail)


def test_out_of_memory_is_a_model_error_and_the_editor_recovers(tiny_editor: DiffusersEditor) -> None:
    handle = raising_in_transformer(tiny_editor, lambda: torch.cuda.OutOfMemoryError("CUDA out of memory"))
    try:
        with pytest.raises(ModelError) as caught:
            tiny_editor.edit([picture()], params())
    finally:
        handle.remove()
    assert (caught.value.reason, caught.value.retryable) == ("out_of_memory", False)  # it would again
    assert tiny_editor.edit([picture()], params()).width > 0


def test_nan_output_is_a_model_error_and_stops_at_once(tiny_editor: DiffusersEditor) -> None:
    def poison(
        module: torch.nn.Module, args: object, output: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        return (torch.full_like(output[0], float("nan")), *output[1:])

    seen: list[int] = []
    handle = tiny_editor.pipeline.transformer.register_forward_hook(poison)
    try:
        with pytest.raises(ModelError) as caught:
            tiny_editor.edit(
                [picture()], params(num_inference_steps=5), on_progress=lambda s, t: seen.append(s)
            )
    finally:
        handle.remove()
    assert (caught.value.reason, caught.value.retryable, seen) == ("nan_output", False, [])
    assert tiny_editor.edit([picture()], params()).width > 0


def test_other_backend_errors_are_model_errors(tiny_editor: DiffusersEditor) -> None:
    handle = raising_in_transformer(tiny_editor, lambda: RuntimeError("CUDA error: an illegal memory access"))
    try:
        with pytest.raises(ModelError) as caught:
            tiny_editor.edit([picture()], params())
    finally:
        handle.remove()
    assert (caught.value.reason, caught.value.retryable) == ("model_error", True)


def test_concurrent_edits_run_one_at_a_time_with_unchanged_results(tiny_editor: DiffusersEditor) -> None:
    seeds = [11, 12, 13, 14]
    expected = {seed: encode_image(tiny_editor.edit([picture()], params(seed=seed)).image) for seed in seeds}
    step_times: dict[int, list[float]] = {seed: [] for seed in seeds}
    results: dict[int, bytes] = {}
    start = threading.Barrier(len(seeds))

    def run(seed: int) -> None:
        start.wait()
        result = tiny_editor.edit(
            [picture()],
            params(seed=seed),
            on_progress=lambda s, t: step_times[seed].append(time.perf_counter()),
        )
        results[seed] = encode_image(result.image)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE)
    assert results == expected  # the pipeline's per-call state was never shared between edits
    # The denoising spans (first to last step) of different edits never overlap.
    spans = sorted((times[0], times[-1]) for times in step_times.values())
    assert all(end < next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


def test_the_models_sizing_applies_during_an_edit_only(tiny_editor: DiffusersEditor) -> None:
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    during: list[tuple[int, int]] = []
    tiny_editor.edit(
        [picture()],
        params(),
        on_progress=lambda s, t: during.append((module.VAE_IMAGE_SIZE, module.CONDITION_IMAGE_SIZE)),
    )
    sizing = tiny_editor.sizing
    assert during == [(sizing.vae_image_area, sizing.condition_image_area)] * 2
    assert (module.VAE_IMAGE_SIZE, module.CONDITION_IMAGE_SIZE) == (1024 * 1024, 384 * 384)


def test_loading_from_settings_logs_the_load_and_warms_up(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from processor.settings import Settings

    settings = Settings(model_id=str(tiny_model_dir), device="cpu", warmup=True)
    with caplog.at_level(logging.INFO, logger="processor.adapters.diffusers.engine"):
        editor = build_editor(settings)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["model loaded", "warm-up done"]
    assert caplog.records[0].seconds > 0  # type: ignore[attr-defined]
    assert editor.describe()["model_id"] == f"local:{tiny_model_dir.name}"


def test_cancelling_during_prompt_encoding_stops_before_denoising(tiny_editor: DiffusersEditor) -> None:
    cancel = threading.Event()
    handle = tiny_editor.pipeline.text_encoder.register_forward_pre_hook(lambda *_: cancel.set())
    try:
        with (
            counting_calls(tiny_editor.pipeline.transformer) as forwards,
            pytest.raises(EditCancelled) as caught,
        ):
            tiny_editor.edit([picture()], params(), cancel=cancel)
    finally:
        handle.remove()
    assert forwards[0] == 0
    assert "before denoising" in str(caught.value)
