"""The ComfyUI engine against the project's ComfyUI-API-compatible server: alone and in the worker."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from processor.adapters.comfyui.editor import ComfyUIEditor, fill_workflow, load_workflow
from processor.composition import build_editor
from processor.devtools.serving import serve_in_thread
from processor.domain.errors import (
    ConfigurationError,
    EditCancelled,
    ModelError,
    TransientError,
    WorkflowError,
)
from processor.domain.request import EditParams
from processor.domain.sizing import ModelSizing, default_output_size
from processor.settings import load_settings
from tests import tiers
from tests.comfyui_server import ComfyState, create_comfyui_app, run_foreign_prompt
from tests.conftest import Harness, acting_as, picture, png_bytes, wait_for


@dataclass
class Comfy:
    url: str
    state: ComfyState

    def editor(self, **kwargs: object) -> ComfyUIEditor:
        return ComfyUIEditor(self.url, timeout=5, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
@tiers.needs("service")
def comfy() -> Iterator[Comfy]:
    state = ComfyState()
    served = serve_in_thread(create_comfyui_app(state))
    try:
        yield Comfy(served.url, state)
    finally:
        state.faults.down = False
        served.stop()


PARAMS = EditParams(prompt="make it blue", num_inference_steps=4, seed=7)


# --- The editor alone --------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 2, 3])
def test_edits_one_to_three_images_with_progress_to_the_total(comfy: Comfy, count: int) -> None:
    steps: list[tuple[int, int]] = []
    result = comfy.editor().edit([picture()] * count, PARAMS, on_progress=lambda s, t: steps.append((s, t)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.seed == 7 and result.model["engine"] == "comfyui"
    assert result.image.size == default_output_size((64, 48), ModelSizing())  # ~1 MP at the last image's 4:3
    assert {"queue_wait", "execution", "fetch", "total"} <= set(result.timings)
    [prompt] = list(comfy.state.history.values())
    workflow = prompt["prompt"][2]
    loaded = [node for node in workflow.values() if node["class_type"] == "LoadImage"]
    assert len(loaded) == count
    encoder = next(node for node in workflow.values() if node["class_type"] == "TextEncodeQwenImageEditPlus")
    assert sorted(name for name in encoder["inputs"] if name.startswith("image")) == [
        f"image{i}" for i in range(1, count + 1)
    ]
    sampler = next(node for node in workflow.values() if node["class_type"] == "KSampler")
    assert (sampler["inputs"]["seed"], sampler["inputs"]["steps"], sampler["inputs"]["cfg"]) == (7, 4, 4.0)


def test_a_seed_is_drawn_and_recorded_and_a_size_can_be_chosen(comfy: Comfy) -> None:
    params = EditParams(prompt="x", num_inference_steps=2, width=96, height=64)
    result = comfy.editor().edit([picture()], params)
    assert isinstance(result.seed, int) and result.image.size == (96, 64)
    [entry] = comfy.state.history.values()
    assert (
        next(n for n in entry["prompt"][2].values() if n["class_type"] == "KSampler")["inputs"]["seed"]
        == result.seed
    )


def test_creation_uploads_the_base_canvas(comfy: Comfy) -> None:
    result = comfy.editor().edit(
        [], EditParams(prompt="a fox", num_inference_steps=2, seed=1, width=64, height=64)
    )
    assert result.base == "blank" and result.image.size == (64, 64)
    assert len(comfy.state.inputs) == 1


def test_inputs_are_stored_once_per_content_so_retries_do_not_fill_comfyuis_folder(comfy: Comfy) -> None:
    editor = comfy.editor()
    for _ in range(3):
        editor.edit([picture(), picture(32, 32)], PARAMS)
    assert len(comfy.state.inputs) == 2


def test_node_errors_and_out_of_memory_map_to_their_failure_classes(comfy: Comfy) -> None:
    editor = comfy.editor()
    comfy.state.faults.node_error_next = True
    with pytest.raises(WorkflowError) as failed:
        editor.edit([picture()], PARAMS)
    assert failed.value.reason == "comfyui_node_error" and not failed.value.retryable
    assert "KSampler" in failed.value.message and "mat1 and mat2" in failed.value.message
    comfy.state.faults.oom_next = True
    with pytest.raises(ModelError) as oom:
        editor.edit([picture()], PARAMS)
    assert oom.value.reason == "out_of_memory" and not oom.value.retryable  # it would again
    assert editor.edit([picture()], PARAMS).image  # and the next edit goes through


def test_a_server_that_is_down_is_a_transient_failure(comfy: Comfy) -> None:
    comfy.state.faults.down = True
    with pytest.raises(TransientError) as caught:
        comfy.editor().edit([picture()], PARAMS)
    assert caught.value.reason == "comfyui_unavailable"
    unreachable = ComfyUIEditor("http://127.0.0.1:9", timeout=2)
    with pytest.raises(TransientError):
        unreachable.edit([picture()], PARAMS)


def test_a_refused_workflow_is_a_workflow_error_with_comfyuis_reason(comfy: Comfy) -> None:
    workflow = load_workflow()
    workflow["1"]["class_type"] = "UNETLoaderThatDoesNotExist"
    with pytest.raises(WorkflowError) as caught:
        comfy.editor(workflow=workflow).edit([picture()], PARAMS)
    assert caught.value.reason == "comfyui_invalid_workflow"
    assert "UNETLoaderThatDoesNotExist does not exist" in caught.value.message


def test_cancel_interrupts_our_running_prompt(comfy: Comfy) -> None:
    comfy.state.faults.step_seconds = 0.1
    cancel = threading.Event()
    with pytest.raises(EditCancelled):
        comfy.editor().edit(
            [picture()],
            EditParams(prompt="x", num_inference_steps=50, seed=1),
            on_progress=lambda step, total: step == 2 and cancel.set(),
            cancel=cancel,
        )
    [interrupt] = comfy.state.faults.interrupts
    assert interrupt["prompt_id"] == interrupt["running"] is not None


def test_cancel_while_a_foreign_prompt_runs_leaves_it_alone(comfy: Comfy) -> None:
    comfy.state.inputs["other.png"] = png_bytes()
    comfy.state.faults.step_seconds = 0.05
    foreign = run_foreign_prompt(comfy.state, "other.png", steps=30)
    wait_for(lambda: comfy.state.running is not None, what="the foreign prompt to run")
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    with pytest.raises(EditCancelled, match="queued"):
        comfy.editor().edit([picture()], PARAMS, cancel=cancel)
    assert comfy.state.faults.interrupts == []  # nothing interrupted
    assert len(comfy.state.faults.deleted) == 1  # ours left the queue instead
    wait_for(
        lambda: comfy.state.history.get(foreign, {}).get("status", {}).get("completed"),
        what="the foreign prompt",
    )


def test_an_interrupt_we_did_not_ask_for_is_retried_not_a_cancel(comfy: Comfy) -> None:
    comfy.state.faults.step_seconds = 0.05

    def press_cancel_in_comfyuis_own_ui() -> None:
        wait_for(lambda: comfy.state.running is not None, what="our prompt to run")
        httpx.post(f"{comfy.url}/interrupt", json={}).raise_for_status()  # no prompt id: whatever runs

    someone_else = threading.Thread(target=press_cancel_in_comfyuis_own_ui)
    someone_else.start()
    with pytest.raises(TransientError) as caught:
        comfy.editor().edit([picture()], EditParams(prompt="x", num_inference_steps=50, seed=1))
    someone_else.join()
    assert caught.value.reason == "comfyui_interrupted" and caught.value.retryable
    assert [i["prompt_id"] for i in comfy.state.faults.interrupts] == [None]


# --- Workflows ---------------------------------------------------------------------------------------
def test_a_user_workflow_with_placeholders(comfy: Comfy, tmp_path: Path) -> None:
    workflow = load_workflow()
    workflow["41"]["inputs"]["sampler_name"] = "dpmpp_2m"
    del workflow["13"], workflow["21"]["inputs"]["image3"], workflow["22"]["inputs"]["image3"]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(workflow))
    editor = build_editor(load_settings(edit_engine="comfyui", comfyui_url=comfy.url, comfyui_workflow=path))
    assert isinstance(editor, ComfyUIEditor) and editor.describe()["workflow"] == path.name
    editor.edit([picture(), picture()], PARAMS)
    [entry] = comfy.state.history.values()
    assert entry["prompt"][2]["41"]["inputs"]["sampler_name"] == "dpmpp_2m"


def test_the_packaged_workflow_only_previews_and_a_saved_image_wins_over_previews(comfy: Comfy) -> None:
    comfy.editor().edit([picture()], PARAMS)
    assert len(comfy.state.temp) == 1 and comfy.state.outputs == {}  # nothing left in ComfyUI's output folder
    workflow = load_workflow()
    workflow["62"] = {"class_type": "SaveImage", "inputs": {"images": ["51", 0], "filename_prefix": "mine"}}
    workflow["63"] = {"class_type": "PreviewImage", "inputs": {"images": ["51", 0]}}
    comfy.editor(workflow=workflow).edit([picture()], PARAMS)
    [saved] = comfy.state.outputs
    assert comfy.state.viewed[-1] == ("output", saved)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda w: w["21"]["inputs"].update(prompt="fixed text"), "prompt"),
        (lambda w: w["41"]["inputs"].update(seed="{{sed}}"), "unknown placeholders"),
        (lambda w: w.update({"99": {"inputs": {}}}), "class_type"),
    ],
)
def test_bad_user_workflows_are_refused_at_start(
    tmp_path: Path, change: Callable[[dict[str, object]], object], message: str
) -> None:
    workflow = load_workflow()
    change(workflow)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(workflow))
    with pytest.raises(ConfigurationError, match=message):
        build_editor(
            load_settings(edit_engine="comfyui", comfyui_url="http://comfy:8188", comfyui_workflow=path)
        )


def test_fewer_images_remove_their_nodes_and_links() -> None:
    filled = fill_workflow(load_workflow(), {"prompt": "p", "negative_prompt": " ", "image1": "a.png", "image2": None,
                                             "image3": None, "steps": 2, "cfg": 4.0, "seed": 1, "width": 64, "height": 64})  # fmt: skip
    assert "12" not in filled and "13" not in filled
    assert set(filled["21"]["inputs"]) == {"clip", "vae", "prompt", "image1"}
    assert filled["41"]["inputs"]["steps"] == 2 and filled["31"]["inputs"]["width"] == 64


def test_settings_choose_the_engine() -> None:
    with pytest.raises(ConfigurationError, match="COMFYUI_URL"):
        build_editor(load_settings(edit_engine="comfyui"))
    with pytest.raises(ConfigurationError, match="COMFYUI_URL"):
        load_settings(edit_engine="comfyui", comfyui_url="comfy:8188")


# --- In the worker -----------------------------------------------------------------------------------
def test_the_worker_edits_through_comfyui(
    comfy: Comfy, start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    comfy.state.faults.step_seconds = 0.05
    harness = start_processor(editor=comfy.editor(), progress_interval_seconds=0.05)
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())], num_inference_steps=12)
    seen = wait_for(
        lambda: 0 < (p := harness.row(request_id)["progress"]) < 1 and p, what="progress in the row"
    )
    row = harness.wait_status(request_id, "succeeded", "failed")
    assert row["status"] == "succeeded", row["error"]
    assert 0 < seen < 1 and row["progress"] == 1 and harness.output_exists(row)
    assert row["result"]["model"]["engine"] == "comfyui" and row["result"]["model"]["prompt_id"]


def test_comfyui_down_mid_run_is_retried_then_succeeds(
    comfy: Comfy, start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    comfy.state.faults.step_seconds = 0.02
    comfy.state.faults.down_at_step = 2
    harness = start_processor(editor=comfy.editor())
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())], num_inference_steps=4)
    queued = wait_for(
        lambda: (r := harness.row(request_id))["attempts"] == 1 and r["status"] == "queued" and r,
        what="a retry after ComfyUI went down",
    )
    assert queued["error_code"] == "comfyui_unavailable"
    comfy.state.faults.down = False  # back up
    harness.db.execute("update edit_requests set next_attempt_at = now() where id = %s", (request_id,))
    row = harness.wait_status(request_id, "succeeded", "failed")
    assert (row["status"], row["attempts"]) == ("succeeded", 2)


def test_a_node_error_fails_the_request_with_its_reason(
    comfy: Comfy, start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    comfy.state.faults.node_error_next = True
    harness = start_processor(editor=comfy.editor())
    user = make_user()
    failed = harness.insert(user, [harness.upload(user, "a.png", png_bytes())])
    row = harness.wait_status(failed, "succeeded", "failed")
    assert (row["status"], row["error_code"], row["attempts"]) == ("failed", "comfyui_node_error", 1)
    nxt = harness.insert(user, [harness.upload(user, "b.png", png_bytes())], num_inference_steps=2)
    assert harness.wait_status(nxt, "succeeded", "failed")["status"] == "succeeded"


def test_canceling_the_row_interrupts_our_prompt(
    comfy: Comfy, start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    comfy.state.faults.step_seconds = 0.1
    harness = start_processor(editor=comfy.editor(), progress_interval_seconds=0.05)
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())], num_inference_steps=100)
    wait_for(lambda: harness.row(request_id)["progress"] > 0, what="the edit to be under way")
    with acting_as(harness.db, "authenticated", user) as conn:
        assert conn.execute("select cancel_edit_request(%s) as ok", (request_id,)).fetchone() == {"ok": True}
    wait_for(lambda: comfy.state.faults.interrupts, what="an interrupt")
    [interrupt] = comfy.state.faults.interrupts
    assert interrupt["prompt_id"] == interrupt["running"]
    worker = harness.service.worker
    assert worker is not None
    wait_for(lambda: not worker.busy, what="the worker to let go")
    row = harness.row(request_id)
    assert row["status"] == "canceled" and row["output_path"] is None


# --- As ComfyUI 0.8.0 behaves when run for real (issue #15, item 6) ----------------------------------
MODEL_FREE = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "{{image1}}"}},
    "2": {"class_type": "PrimitiveString", "inputs": {"value": "{{prompt}}"}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "4": {"class_type": "ImageBlur", "inputs": {"image": ["3", 0], "blur_radius": 1, "sigma": 1.0}},
    "5": {"class_type": "ImageScaleBy", "inputs": {"image": ["4", 0], "upscale_method": "nearest-exact", "scale_by": 0.5}},
    "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "free"}},
}  # fmt: skip


def listen(comfy: Comfy, client_id: str) -> tuple[Any, list[dict[str, Any]]]:
    """A raw websocket client that records every JSON message and the history seen at each."""
    socket = ws_connect(f"{comfy.url.replace('http', 'ws')}/ws?clientId={client_id}")
    return socket, []


def read_until_done(comfy: Comfy, socket: Any, prompt_id: str) -> list[tuple[str, bool]]:
    """(type, whether /history had the prompt at that moment) for each of our prompt's messages."""
    seen: list[tuple[str, bool]] = []
    while True:
        raw = socket.recv(timeout=10)
        if isinstance(raw, bytes):
            seen.append(("binary", False))
            continue
        message = json.loads(raw)
        data = message["data"]
        if data.get("prompt_id") not in (prompt_id, None):
            continue
        # Asked at execution_success and at the end only, so reading keeps up with the messages.
        asked = message["type"] == "execution_success" or data.get("node", "") is None
        in_history = asked and prompt_id in httpx.get(f"{comfy.url}/history/{prompt_id}").json()
        seen.append((message["type"], in_history))
        if message["type"] == "executing" and data["node"] is None and data.get("prompt_id") == prompt_id:
            return seen


def test_the_message_order_is_comfyuis_history_only_after_success(comfy: Comfy) -> None:
    comfy.state.faults.history_seconds = 0.5
    comfy.state.inputs["in.png"] = png_bytes()
    workflow = fill_workflow(MODEL_FREE, {"image1": "in.png", "prompt": "p"})
    socket, _ = listen(comfy, "me")
    with socket:
        assert json.loads(socket.recv(timeout=5))["type"] == "status"
        answer = httpx.post(
            f"{comfy.url}/prompt", json={"prompt": workflow, "client_id": "me", "prompt_id": "mine-1"}
        )
        assert answer.json()["prompt_id"] == "mine-1"  # a client-chosen prompt id is kept
        seen = read_until_done(comfy, socket, "mine-1")
    kinds = [kind for kind, _ in seen]
    assert "binary" not in kinds  # no preview frames: latent previews are off by default
    assert kinds.count("status") >= 2 and "progress_state" in kinds
    success = kinds.index("execution_success")
    assert kinds.index("execution_start") < kinds.index("executed") < success < len(kinds) - 1
    assert seen[success] == ("execution_success", False)  # not in /history yet: the bug's window
    assert seen[-1] == ("executing", True)  # written before "executing: null"


def test_the_editor_waits_for_the_history_after_execution_success(comfy: Comfy) -> None:
    # Real ComfyUI writes the history after execution_success; reading it then gave "no history"
    # (8 of 150 edits retried as comfyui_unavailable). The window is widened here so it shows every time.
    comfy.state.faults.history_seconds = 0.5
    result = comfy.editor().edit([picture()], PARAMS)
    assert result.image.size == default_output_size((64, 48), ModelSizing())


def test_model_free_workflows_run_with_one_monotonic_progress(comfy: Comfy) -> None:
    comfy.state.faults.node_progress = {"ImageInvert": 25, "ImageBlur": 25}  # each restarts at 1/25
    steps: list[tuple[int, int]] = []
    editor = comfy.editor(workflow=MODEL_FREE, workflow_name="model-free.json")
    result = editor.edit([picture(64, 48)], PARAMS, on_progress=lambda s, t: steps.append((s, t)))
    fractions = [s / t for s, t in steps]
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions) > 25
    assert 0.5 < fractions[-1] <= 1
    assert result.image.size == (32, 24)  # inverted, blurred, scaled by 0.5: really run
    # The runner survives a workflow without a sampler: the packaged one runs next.
    assert comfy.editor().edit([picture()], PARAMS).image


def test_a_workflow_without_an_output_node_is_refused_as_comfyui_does(comfy: Comfy) -> None:
    workflow = {k: v for k, v in MODEL_FREE.items() if k != "6"}
    answer = httpx.post(
        f"{comfy.url}/prompt", json={"prompt": fill_workflow(workflow, {"image1": "x.png", "prompt": "p"})}
    )
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "prompt_no_outputs"
    with pytest.raises(WorkflowError, match="Prompt has no outputs") as caught:
        comfy.editor(workflow=workflow).edit([picture()], PARAMS)
    assert caught.value.reason == "comfyui_invalid_workflow"


def test_a_missing_input_file_is_custom_validation_failed_by_node_id(comfy: Comfy) -> None:
    workflow = fill_workflow(MODEL_FREE, {"image1": "not-there.png", "prompt": "p"})
    answer = httpx.post(f"{comfy.url}/prompt", json={"prompt": workflow}).json()
    assert answer["error"]["type"] == "prompt_outputs_failed_validation"
    [error] = answer["node_errors"]["1"]["errors"]
    assert (
        error["type"] == "custom_validation_failed"
        and "Invalid image file: not-there.png" in error["details"]
    )
    assert answer["node_errors"]["1"]["dependent_outputs"] == ["6"]


def test_uploads_stay_in_the_input_folder_and_never_overwrite_by_accident(comfy: Comfy) -> None:
    def upload(data: bytes, subfolder: str = "", overwrite: bool = False) -> httpx.Response:
        form = {"type": "input", "subfolder": subfolder, **({"overwrite": "true"} if overwrite else {})}
        return httpx.post(
            f"{comfy.url}/upload/image", files={"image": ("a.png", data, "image/png")}, data=form
        )

    assert upload(b"one", subfolder="../escape").status_code == 400
    assert upload(b"one").json()["name"] == "a.png"
    assert upload(b"one").json()["name"] == "a.png"  # the same bytes: the same file
    assert upload(b"two").json()["name"] == "a (1).png"  # other bytes: a new name
    assert upload(b"three", overwrite=True).json()["name"] == "a.png"
    assert comfy.state.inputs["a.png"] == b"three"
    assert httpx.get(f"{comfy.url}/view", params={"filename": "a.png", "type": "secret"}).status_code == 400
    assert httpx.get(f"{comfy.url}/view", params={"filename": "../a.png", "type": "input"}).status_code == 400
    assert httpx.get(f"{comfy.url}/view", params={"filename": "a.png", "type": "input"}).content == b"three"


def test_a_frozen_server_is_noticed_by_the_websocket_keepalive(comfy: Comfy) -> None:
    comfy.state.faults.step_seconds = 0.05
    comfy.state.faults.freeze_at_step = (2, 3.0)  # the event loop stops: no answers, no pongs
    editor = comfy.editor(ping_interval=0.3, ping_timeout=0.6)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        editor.edit([picture()], EditParams(prompt="x", num_inference_steps=50, seed=1))
    assert caught.value.reason == "comfyui_unavailable"
    # Within about interval + timeout (+ the bounded close), before the freeze even ends; not ~50 s.
    assert time.monotonic() - started < 2.5


def test_a_client_that_leaves_is_let_go_at_once(comfy: Comfy) -> None:
    comfy.editor().edit([picture()], PARAMS)
    wait_for(lambda: not comfy.state.sockets, what="the server to notice the client left")
