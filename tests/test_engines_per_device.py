"""Several GPUs on one host (issue #21): ``worker`` and ``serve`` load one engine per visible device and
run as many edits at once, each on a free engine. On CPU with a stand-in device list."""

from __future__ import annotations

import asyncio
import io
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from processor.adapters.diffusers import loading
from processor.adapters.diffusers.engine import DiffusersEditor
from processor.composition import build_editor, worker_config
from processor.core.editor_pool import EditorPool
from processor.domain.errors import ConfigurationError, EditCancelled
from processor.domain.ports.editor import engine_count
from processor.domain.request import EditParams
from processor.settings import load_settings
from processor.testing import (
    InMemoryJobQueue,
    InMemoryObjectStorage,
    ManualClock,
    StandInEditor,
    eventually,
    fast_config,
    running_worker,
)
from tests.conftest import DEADLINE, OWNER


@pytest.mark.parametrize(
    ("choice", "visible", "expected"),
    [
        ("auto", 0, ["cpu"]),
        ("auto", 1, ["cuda:0"]),
        ("auto", 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        ("cuda", 2, ["cuda:0", "cuda:1"]),
        ("cpu", 8, ["cpu"]),
    ],
)
def test_one_engine_per_visible_device(choice: str, visible: int, expected: list[str]) -> None:
    assert [str(device) for device in loading.engine_devices(choice, visible)] == expected


def test_cuda_without_a_visible_gpu_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no CUDA device"):
        loading.engine_devices("cuda", 0)


def test_the_worker_loads_one_engine_per_gpu_and_the_cli_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three GPUs visible (stood in): the service's editor is a pool of three engines, one on each,
    and the worker gets three GPU turns; the CLI and RunPod load one engine."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loaded: list[str] = []

    def load(model_id: Any, *, device: Any, **options: Any) -> StandInEditor:
        loaded.append(str(device))
        return StandInEditor()

    monkeypatch.setattr(DiffusersEditor, "load", load)
    settings = load_settings(device="auto", model_id="some/model")
    pool = build_editor(settings, every_device=True)
    assert isinstance(pool, EditorPool) and loaded == ["cuda:0", "cuda:1", "cuda:2"]
    assert engine_count(pool) == 3 and worker_config(settings).worker_concurrency is None
    loaded.clear()
    single = build_editor(settings)
    assert isinstance(single, StandInEditor) and loaded == ["cuda"]


def test_a_failed_engine_closes_those_already_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    first = StandInEditor()

    def load(model_id: Any, *, device: Any, **options: Any) -> StandInEditor:
        if str(device) == "cuda:1":
            raise ConfigurationError("out of memory while loading")
        return first

    monkeypatch.setattr(DiffusersEditor, "load", load)
    with pytest.raises(ConfigurationError):
        build_editor(load_settings(device="cuda", model_id="some/model"), every_device=True)
    assert first.closed


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_worker_runs_one_edit_per_engine_at_once() -> None:
    """Two engines, WORKER_CONCURRENCY unset: two jobs edit at the same time, one on each engine."""
    clock = ManualClock()
    storage = InMemoryObjectStorage(clock=clock)
    queue = InMemoryJobQueue(clock=clock, storage=storage)
    engines = [StandInEditor(hold_at=1), StandInEditor(hold_at=1)]
    pool = EditorPool(engines)

    async def scenario() -> None:
        ids = []
        for _ in range(2):
            request_id = uuid.uuid4()
            storage.put("edit-inputs", f"{OWNER}/{request_id}.png", png())
            ids.append(
                queue.enqueue("make it blue", [f"{OWNER}/{request_id}.png"], id=request_id, user_id=OWNER)
            )
        config = fast_config(worker_concurrency=None, worker_prefetch=0)
        async with running_worker(queue, storage, pool, config):
            # Both held mid-edit at once: each on its own engine.
            await asyncio.to_thread(engines[0].held.wait, DEADLINE)
            await asyncio.to_thread(engines[1].held.wait, DEADLINE)
            for engine in engines:
                engine.proceed.set()
            await eventually(lambda: all(queue.row(i).status == "succeeded" for i in ids), timeout=DEADLINE)

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
    assert sorted(pool.assigned) == [0, 1] and [engine.calls for engine in engines] == [1, 1]


def test_an_edit_waiting_for_a_busy_pool_can_be_cancelled() -> None:
    engine = StandInEditor(hold_at=1)
    pool = EditorPool([engine])
    params = EditParams(prompt="p", num_inference_steps=2)
    image = Image.new("RGB", (64, 48))
    first = threading.Thread(target=pool.edit, args=([image], params), daemon=True)
    first.start()
    assert engine.held.wait(DEADLINE)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EditCancelled):
        pool.edit([image], params, cancel=cancel)
    engine.proceed.set()
    first.join(DEADLINE)
    assert pool.assigned == [0]


def test_two_real_engines_on_stand_in_devices_give_one_engines_results(
    tiny_model_dir: Path, tiny_editor: DiffusersEditor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny model loaded twice (a device list of two CPUs stood in for two GPUs): an input prepared by
    one engine runs on the other, with the same result as one engine alone."""
    monkeypatch.setattr(loading, "engine_devices", lambda choice: [torch.device("cpu"), torch.device("cpu")])
    settings = load_settings(model_id=str(tiny_model_dir), device="cpu", warmup=False)
    pool = build_editor(settings, every_device=True)
    assert isinstance(pool, EditorPool) and engine_count(pool) == 2
    try:
        image = Image.new("RGB", (64, 48), (200, 40, 90))
        params = EditParams(prompt="make it blue", num_inference_steps=2, seed=3)
        expected = tiny_editor.edit([image], params).image.tobytes()
        held = threading.Event()
        go = threading.Event()

        def hold(step: int, total: int) -> None:
            held.set()
            go.wait(DEADLINE)

        busy = threading.Thread(target=pool.edit, args=([image], params), kwargs={"on_progress": hold})
        busy.start()
        assert held.wait(DEADLINE)  # engine 0 is busy: the next edit runs on engine 1
        prepared = pool.prepare([image], params)  # prepared by engine 0's pipeline
        second = pool.edit([image], params, prepared=prepared)
        go.set()
        busy.join(DEADLINE)
        assert pool.assigned == [0, 1]
        assert second.image.tobytes() == expected
    finally:
        pool.close()
