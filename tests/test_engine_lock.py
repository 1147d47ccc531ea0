"""The engine's lock covers device work only (issue #21): inputs are resized, preprocessed and run through
the Qwen2-VL processor before it is taken, and the output leaves it as 8-bit pixels, made into a picture
after it. Measured on the tiny model with every stage's span recorded next to the lock's."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from processor.adapters.diffusers import engine as engine_module
from processor.adapters.diffusers.engine import DiffusersEditor, to_pixels
from processor.adapters.diffusers.run import PreparedImageProcessor, PreparedProcessor
from processor.domain.images import encode_image
from processor.domain.request import EditParams
from tests.conftest import DEADLINE, wait_for

Span = tuple[str, float, float]


def picture(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


class RecordingLock:
    """The engine's lock, recording when it was held (acquired to released)."""

    def __init__(self, spans: list[Span]) -> None:
        self._lock = threading.Lock()
        self._spans = spans
        self._acquired = 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self._acquired = time.perf_counter()
        return True

    def release(self) -> None:
        self._spans.append(("lock", self._acquired, time.perf_counter()))
        self._lock.release()

    def __enter__(self) -> RecordingLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class Recorded:
    """Forwards to ``inner``; its calls (and the methods named) record their spans as ``name``."""

    def __init__(self, inner: Any, name: str, spans: list[Span], methods: tuple[str, ...] = ()) -> None:
        self._inner, self._name, self._spans, self._methods = inner, name, spans, methods

    def _timed(self, name: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self._spans.append((name, started, time.perf_counter()))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self._name, self._inner, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name in self._methods:
            return lambda *a, **k: self._timed(f"{self._name}.{name}", value, *a, **k)
        return value


@contextmanager
def instrumented(editor: DiffusersEditor, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Span]]:
    """Record the lock, the CPU stages (resize, preprocess, processor, picture) and the device's
    forwards (text encoder, transformer, VAE decoder) of the edits run inside."""
    spans: list[Span] = []
    pipe = editor.pipeline
    assert isinstance(pipe.image_processor, PreparedImageProcessor)
    assert isinstance(pipe.processor, PreparedProcessor)
    monkeypatch.setattr(editor, "_lock", RecordingLock(spans))
    monkeypatch.setattr(
        pipe.image_processor,
        "inner",
        Recorded(pipe.image_processor.inner, "image", spans, ("resize", "preprocess")),
    )
    monkeypatch.setattr(pipe.processor, "inner", Recorded(pipe.processor.inner, "processor", spans))
    monkeypatch.setattr(engine_module.Image, "fromarray", Recorded(Image.fromarray, "picture", spans))
    handles = []
    for name, module in (
        ("text_encoder", pipe.text_encoder),
        ("transformer", pipe.transformer),
        ("vae_decoder", pipe.vae.decoder),
    ):
        starts: list[float] = []

        def before(*_: object, starts: list[float] = starts) -> None:
            starts.append(time.perf_counter())

        def after(*_: object, name: str = name, starts: list[float] = starts) -> None:
            spans.append((name, starts.pop(), time.perf_counter()))

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield spans
    finally:
        for handle in handles:
            handle.remove()


def inside(span: Span, locks: list[Span]) -> bool:
    return any(start <= span[1] and span[2] <= end for _, start, end in locks)


def overlaps(span: Span, locks: list[Span]) -> bool:
    return any(span[1] < end and start < span[2] for _, start, end in locks)


def test_the_lock_is_held_only_around_device_work(
    tiny_editor: DiffusersEditor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="processor.adapters.diffusers.engine")
    images = [picture(64, 48, 1), picture(48, 64, 2)]
    with instrumented(tiny_editor, monkeypatch) as spans:
        # True CFG (the quality preset): the negative prompt is prepared too.
        result = tiny_editor.edit(
            images,
            EditParams(prompt="make the sky blue", num_inference_steps=2, seed=5, true_cfg_scale=4.0),
        )
    locks = [span for span in spans if span[0] == "lock"]
    assert len(locks) == 1
    names = [name for name, _, _ in spans]
    # Two inputs: a condition image and a VAE image each; the prompt and the negative prompt.
    assert names.count("image.resize") >= 2 and names.count("image.preprocess") == 2
    assert names.count("processor") == 2 and names.count("picture") == 1
    cpu = [span for span in spans if span[0].startswith(("image.", "processor", "picture"))]
    assert [span for span in cpu if overlaps(span, locks)] == []
    device = [span for span in spans if span[0] in ("text_encoder", "transformer", "vae_decoder")]
    assert {name for name, _, _ in device} == {"text_encoder", "transformer", "vae_decoder"}
    assert all(inside(span, locks) for span in device)
    # Before, then after: the preparation ends before the lock is taken, the picture starts after it.
    assert max(end for name, _, end in cpu if name != "picture") <= locks[0][1]
    assert min(start for name, start, _ in cpu if name == "picture") >= locks[0][2]
    assert not [r for r in caplog.records if "not prepared" in r.getMessage()]
    assert {"preprocessing", "postprocessing"} <= set(result.timings)


def test_an_edit_prepares_while_another_holds_the_lock(
    tiny_editor: DiffusersEditor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of it: a second edit's CPU work runs while the first one's device work does."""
    params = EditParams(prompt="make the sky blue", num_inference_steps=3, seed=3)
    expected = encode_image(tiny_editor.edit([picture(seed=4)], params).image)
    held = threading.Event()
    proceed = threading.Event()

    def hold(step: int, total: int) -> None:
        if step == 1:
            held.set()
            assert proceed.wait(DEADLINE)

    inputs = [picture(seed=4)], [picture(seed=4)]
    with instrumented(tiny_editor, monkeypatch) as spans:
        first = threading.Thread(
            target=lambda: tiny_editor.edit(inputs[0], params, on_progress=hold), daemon=True
        )
        first.start()
        assert held.wait(DEADLINE)
        results: list[bytes] = []
        second = threading.Thread(
            target=lambda: results.append(encode_image(tiny_editor.edit(inputs[1], params).image)),
            daemon=True,
        )
        second.start()
        # The second edit's processor call ends while the first edit still holds the lock.
        wait_for(lambda: sum(name == "processor" for name, _, _ in spans) >= 2, what="the second preparation")
        assert not [name for name, _, _ in spans if name == "lock"]  # the first still holds it
        proceed.set()
        first.join(DEADLINE)
        second.join(DEADLINE)
    assert results == [expected]  # waiting changed nothing in the result


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pixels_made_on_the_device_are_the_pipelines(
    tiny_editor: DiffusersEditor, dtype: torch.dtype
) -> None:
    processor = tiny_editor.pipeline.image_processor
    generator = torch.Generator().manual_seed(1)
    # Values beyond [-1, 1] (clamped) and exactly on the rounding halves included.
    decoded = (torch.rand((1, 3, 37, 53), generator=generator) * 2.4 - 1.2).to(dtype)
    decoded[0, 0, 0, :5] = torch.tensor([-1.0, 1.0, 0.0, 1 / 255 - 1, 2 * 0.5 / 255 - 1]).to(dtype)
    theirs = np.asarray(processor.postprocess(decoded, output_type="pil")[0])
    ours = to_pixels(processor, decoded)
    assert ours.dtype == torch.uint8 and ours.device.type == "cpu"
    assert np.array_equal(ours.numpy(), theirs)
