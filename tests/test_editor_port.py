"""The ``Editor`` port's contract, run against every adapter: the diffusers engine and the ComfyUI engine.

Whatever engine a deployment picks, the worker, REST, MCP and RunPod see the same
behaviour: progress step by step to the total, the seed recorded, the model's size rule,
creation from a canvas, the same refusals, and a cancel that ends without output.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from PIL import Image

from processor.adapters.comfyui.editor import ComfyUIEditor
from processor.adapters.diffusers.tiny_model import TINY_SIZING
from processor.devtools.serving import serve_in_thread
from processor.domain.errors import EditCancelled, InvalidInput
from processor.domain.ports.editor import Editor
from processor.domain.request import EditParams
from tests.comfyui_server import ComfyState, create_comfyui_app
from tests.conftest import picture


@pytest.fixture(params=["diffusers", "comfyui"])
def editor(request: pytest.FixtureRequest) -> Iterator[Editor]:
    if request.param == "diffusers":
        yield request.getfixturevalue("tiny_editor")
        return
    state = ComfyState()
    state.faults.step_seconds = 0.01
    served = serve_in_thread(create_comfyui_app(state))
    try:
        # The tiny model's working areas, so both adapters give the same sizes.
        yield ComfyUIEditor(served.url, timeout=5, sizing=TINY_SIZING)
    finally:
        served.stop()


def test_progress_is_reported_after_every_step_up_to_the_total(editor: Editor) -> None:
    steps: list[tuple[int, int]] = []
    editor.edit(
        [picture()],
        EditParams(prompt="x", num_inference_steps=3, seed=1),
        on_progress=lambda s, t: steps.append((s, t)),
    )
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_the_seed_is_recorded_and_drawn_when_absent(editor: Editor) -> None:
    assert editor.edit([picture()], EditParams(prompt="x", num_inference_steps=2, seed=11)).seed == 11
    drawn = editor.edit([picture()], EditParams(prompt="x", num_inference_steps=2)).seed
    assert isinstance(drawn, int) and 0 <= drawn < 2**31


def test_sizes_follow_the_last_image_or_the_request(editor: Editor) -> None:
    wide, tall = picture(128, 64), picture(64, 128)
    assert editor.edit([tall, wide], EditParams(prompt="x", num_inference_steps=2)).image.size == (96, 32)
    sized = EditParams(prompt="x", num_inference_steps=2, width=48, height=32)
    assert editor.edit([picture()], sized).image.size == (48, 32)


def test_creation_starts_from_a_canvas(editor: Editor) -> None:
    result = editor.edit(
        [], EditParams(prompt="a fox", num_inference_steps=2, base="noise", width=64, height=48)
    )
    assert result.base == "noise" and result.image.size == (64, 48)


@pytest.mark.parametrize(
    "images, params, reason",
    [
        ([picture()] * 4, EditParams(prompt="x"), "too_many_images"),
        ([picture()], EditParams(prompt=" "), "invalid_prompt"),
        ([picture()], EditParams(prompt="x", num_inference_steps=1), "invalid_parameter"),
        ([picture()], EditParams(prompt="x", width=50, height=64), "invalid_size"),
        ([], EditParams(prompt="x", base_color="blue"), "invalid_parameter"),
    ],
)
def test_bad_input_is_refused_with_the_same_reason(
    editor: Editor, images: list[Image.Image], params: EditParams, reason: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        editor.edit(images, params)
    assert caught.value.reason == reason


def test_cancel_between_steps_ends_without_output(editor: Editor) -> None:
    cancel = threading.Event()
    with pytest.raises(EditCancelled):
        editor.edit(
            [picture()],
            EditParams(prompt="x", num_inference_steps=20, seed=1),
            on_progress=lambda step, total: step == 2 and cancel.set(),
            cancel=cancel,
        )
    assert editor.edit([picture()], EditParams(prompt="x", num_inference_steps=2)).image  # still usable


def test_describe_names_the_engine_without_secrets(editor: Editor) -> None:
    description = editor.describe()
    assert description["engine"] in {"diffusers", "comfyui"}
    assert "authorization" not in str(description).lower()
