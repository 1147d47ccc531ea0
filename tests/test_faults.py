"""Faults: workers dying at the worst moments, Storage failing past its retries, model errors,
late or repeated webhooks. Each request ends once, with one output, and the queue keeps moving."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image

from processor.domain.errors import ModelError
from processor.domain.ports.editor import Editor, EditorWrapper, EditResult, PreviewSink, ProgressCallback
from processor.domain.request import EditParams
from tests.conftest import Harness, insert_requests, png_bytes, upload, wait_for

Row = dict[str, Any]


class FailingEditor(EditorWrapper):
    """An editor adapter that fails the way a GPU does for prompts starting with ``fail:``."""

    def __init__(self, inner: Editor) -> None:
        super().__init__(inner)
        self.runs: dict[str, int] = {}

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
    ) -> EditResult:
        self.runs[params.prompt] = self.runs.get(params.prompt, 0) + 1
        if params.prompt == "fail:oom":
            raise ModelError("CUDA out of memory. Tried to allocate 20.00 GiB", reason="out_of_memory")
        if params.prompt == "fail:nan":
            raise ModelError("the model produced NaN or infinite values (latents)", reason="nan_output")
        if params.prompt == "fail:bug":
            raise RuntimeError("something nobody expected")
        return super().edit(images, params, on_progress=on_progress, cancel=cancel, previews=previews)


def insert_as_service(harness: Harness, user: uuid.UUID, path: str, **columns: Any) -> uuid.UUID:
    values = {
        "user_id": user,
        "prompt": "make it blue",
        "input_paths": [path],
        "num_inference_steps": 2,
        **columns,
    }
    row = harness.db.execute(
        f"insert into edit_requests ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) returning id",
        tuple(values.values()),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def test_worker_killed_between_upload_and_complete_is_finished_once_by_another(
    db: psycopg.Connection[Row],
    storage_server: Any,
    spawn_worker: Callable[..., Any],
    start_processor: Callable[..., Harness],
    make_user: Any,
) -> None:
    user = make_user()
    [request_id] = insert_requests(db, user, upload(storage_server, user), 1, num_inference_steps=2)
    # The output is stored, but the worker never hears back: it dies before it can complete.
    storage_server.faults.delay_answer_next(1, 15, method="POST", path=r"/object/edit-outputs/")
    doomed = spawn_worker("doomed")
    wait_for(
        lambda: db.execute("select 1 from storage.objects where bucket_id = 'edit-outputs'").fetchone(),
        what="the output to be stored",
    )
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    assert db.execute("select status from edit_requests").fetchone() == {"status": "processing"}

    # The killed worker's lease is 3 s (spawn_worker); the rescuer's own is the long default.
    rescuer = start_processor(heartbeat_interval_seconds=0.5, sweep_interval_seconds=0.3)
    row = rescuer.wait_status(request_id, "succeeded", "failed")

    assert (row["status"], row["attempts"]) == ("succeeded", 2)
    assert db.execute(
        "select count(*) as n from storage.objects where bucket_id = 'edit-outputs'"
    ).fetchone() == {"n": 1}


def test_storage_failing_past_its_retries_fails_the_request_and_the_queue_moves_on(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(storage_retry_attempts=2)
    user = make_user()
    broken_path = harness.upload(user, "broken.png", png_bytes())
    harness.storage.faults.fail_next(1000, 503, method="GET", path=r"broken\.png")
    broken = insert_as_service(harness, user, broken_path, max_attempts=1)
    fine = insert_as_service(harness, user, harness.upload(user, "fine.png", png_bytes()))

    failed = harness.wait_status(broken, "failed", "succeeded")
    assert (failed["status"], failed["error_code"]) == ("failed", "storage_unavailable")
    assert "503" in failed["error"]
    assert harness.wait_status(fine, "succeeded", "failed")["status"] == "succeeded"


def test_a_transient_failure_is_retried_by_the_queue(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(storage_retry_attempts=1)
    user = make_user()
    path = harness.upload(user, "a.png", png_bytes())
    harness.storage.faults.fail_next(1, 503, method="GET", path=r"a\.png")
    request_id = insert_as_service(harness, user, path)

    queued = wait_for(
        lambda: (r := harness.row(request_id))["attempts"] == 1 and r["status"] == "queued" and r,
        what="a retry",
    )
    assert queued["error_code"] == "storage_unavailable" and queued["next_attempt_at"] is not None
    harness.db.execute(
        "update edit_requests set next_attempt_at = now() where id = %s", (request_id,)
    )  # skip the wait

    row = harness.wait_status(request_id, "succeeded", "failed")
    assert (row["status"], row["attempts"], row["error"]) == ("succeeded", 2, None)


def test_model_errors_fail_the_request_and_the_worker_stays_healthy(
    start_processor: Callable[..., Harness], tiny_editor: Editor, make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(editor=FailingEditor(tiny_editor))
    user = make_user()
    path = harness.upload(user, "a.png", png_bytes())
    oom = insert_as_service(harness, user, path, prompt="fail:oom", max_attempts=1)
    bug = insert_as_service(harness, user, path, prompt="fail:bug", max_attempts=1)
    fine = insert_as_service(harness, user, path)

    assert harness.wait_status(oom, "failed")["error_code"] == "out_of_memory"
    crashed = harness.wait_status(bug, "failed")
    assert crashed["error_code"] == "internal_error" and "something nobody expected" in crashed["error"]
    assert harness.wait_status(fine, "succeeded", "failed")["status"] == "succeeded"
    assert httpx.get(f"{harness.served.url}/readyz").status_code == 200


@pytest.mark.parametrize("prompt", ["fail:nan", "fail:oom"])
def test_a_failure_the_same_model_repeats_runs_once_not_once_per_attempt(
    start_processor: Callable[..., Harness],
    tiny_editor: Editor,
    make_user: Callable[[], uuid.UUID],
    prompt: str,
) -> None:
    """Issue 22 (also look at): NaN output and out of memory come back on every attempt with the same
    weights, sizes and device; retrying them ran the whole edit up to max_attempts times for one
    charge. They fail for good at once (the user may submit again, and is charged again)."""
    editor = FailingEditor(tiny_editor)
    harness = start_processor(editor=editor)
    user = make_user()
    request = insert_as_service(harness, user, harness.upload(user, "a.png", png_bytes()), prompt=prompt)
    assert harness.row(request)["max_attempts"] == 3
    row = wait_for(lambda: (r := harness.row(request))["error_code"] is not None and r, what="the failure")
    assert (row["status"], row["attempts"], editor.runs[prompt]) == ("failed", 1, 1)


def test_late_and_repeated_webhooks_change_nothing(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor()
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())])
    done = harness.wait_status(request_id, "succeeded")

    for _ in range(3):
        assert harness.webhook(request_id).status_code == 202
    unknown = harness.webhook(uuid.uuid4())
    assert unknown.status_code == 202

    after = harness.row(request_id)
    assert (after["status"], after["attempts"], after["updated_at"]) == ("succeeded", 1, done["updated_at"])
