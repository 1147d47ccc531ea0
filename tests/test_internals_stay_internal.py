"""What a user (or anyone) may see: their results and reason codes, not the processor's insides.

Hosts, credentials, file paths and raw exception text go to logs and operators, never into rows,
PNG text, /readyz answers or unauthenticated /metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from processor.adapters.comfyui.editor import ComfyUIEditor
from processor.adapters.diffusers.engine import DiffusersEditor
from tests.conftest import METRICS_HEADERS, Harness


def test_the_comfyui_engine_records_no_server_address_or_workflow_path(tmp_path: Path) -> None:
    workflow = tmp_path / "private" / "my-workflow.json"
    workflow.parent.mkdir()
    from processor.adapters.comfyui.editor import load_workflow

    workflow.write_text(__import__("json").dumps(load_workflow()))
    editor = ComfyUIEditor(
        "http://user:secret@comfy.internal:8188",
        workflow=load_workflow(workflow),
        workflow_name=str(workflow),
    )
    try:
        described = str(editor.describe())
    finally:
        editor.close()
    assert "comfy.internal" not in described and "secret" not in described
    assert str(tmp_path) not in described and "my-workflow.json" in described


def test_a_local_model_folder_is_recorded_by_name_not_by_path(
    tiny_editor: DiffusersEditor, tiny_model_dir: Path
) -> None:
    model_id = tiny_editor.describe()["model_id"]
    assert str(tiny_model_dir.parent) not in model_id
    assert model_id == f"local:{tiny_model_dir.name}"


def test_metrics_need_the_metrics_token(start_processor: Callable[..., Harness]) -> None:
    harness = start_processor()
    url = f"{harness.served.url}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = httpx.get(url, headers=METRICS_HEADERS)
    assert answer.status_code == 200 and "edit_processor_jobs_in_progress" in answer.text


def test_without_a_metrics_token_metrics_are_off(start_processor: Callable[..., Harness]) -> None:
    harness = start_processor(metrics_token=None)
    assert httpx.get(f"{harness.served.url}/metrics", headers=METRICS_HEADERS).status_code == 404
