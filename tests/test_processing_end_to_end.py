"""The processor end to end: real PostgreSQL, the Storage-compatible server over HTTP,
the tiny model through the real diffusers pipeline, and the real HTTP app.

An "app" uploads with a user token and inserts its row as that user (RLS applies); the
service wakes through the webhook, LISTEN or the sweep, and the row must end where it should.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from processor.adapters.postgres.queue import PostgresJobQueue
from processor.composition import worker_config
from processor.core.service import ProcessorService
from processor.devtools.serving import serve_in_thread
from processor.domain.ports.editor import Editor
from processor.entrypoints.http_app import create_app
from tests.conftest import (
    METRICS_HEADERS,
    WEBHOOK_SECRET,
    GatedEditor,
    Harness,
    StorageServer,
    acting_as,
    load_settings,
    png_bytes,
    wait_for,
)


def test_upload_then_insert_succeeds_with_output_and_result(
    start_processor: Callable[..., Harness], make_user
) -> None:
    harness = start_processor()
    user = make_user()
    path = harness.upload(user, "in.png", png_bytes())
    request_id = harness.insert(user, [path], seed=7)

    row = harness.wait_status(request_id, "succeeded", "failed")

    assert row["status"] == "succeeded", row["error"]
    assert row["progress"] == 1
    assert row["output_path"] == f"{user}/{request_id}.png"
    assert harness.output_exists(row)
    assert row["result"]["seed"] == 7
    assert {"prompt_encoding", "denoising", "decoding"} <= set(row["result"]["timings"])
    assert row["result"]["model"]["model_id"]
    assert row["attempts"] == 1


def test_insert_then_upload_waits_for_the_image_then_succeeds(
    start_processor: Callable[..., Harness], make_user
) -> None:
    harness = start_processor()
    user = make_user()
    request_id = harness.insert(user, [f"{user}/late.png"])
    assert harness.row(request_id)["status"] == "awaiting_image"

    harness.upload(user, "late.png", png_bytes())

    assert harness.wait_status(request_id, "succeeded", "failed")["status"] == "succeeded"


def test_two_and_three_input_images(start_processor: Callable[..., Harness], make_user) -> None:
    harness = start_processor()
    user = make_user()
    paths = [harness.upload(user, f"{i}.png", png_bytes((48 + 16 * i, 64))) for i in range(3)]
    two = harness.insert(user, paths[:2])
    three = harness.insert(user, paths)
    for request_id in (two, three):
        assert harness.wait_status(request_id, "succeeded", "failed")["status"] == "succeeded"


def test_webhook_alone_wakes_the_worker(start_processor: Callable[..., Harness], make_user) -> None:
    harness = start_processor(listen=False, sweep_interval_seconds=3600)
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())])

    response = harness.webhook(request_id)

    assert response.status_code == 202
    assert harness.wait_status(request_id, "succeeded", "failed")["status"] == "succeeded"


def test_wrong_webhook_secret_is_refused_and_does_nothing(
    start_processor: Callable[..., Harness], make_user
) -> None:
    harness = start_processor(listen=False, sweep_interval_seconds=3600)
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())])

    assert harness.webhook(request_id, secret="wrong").status_code == 401
    missing = httpx.post(f"{harness.served.url}/webhooks/edit-requests", json={})
    assert missing.status_code == 401
    worker = harness.service.worker
    assert worker is not None and not worker.busy
    assert harness.row(request_id)["status"] == "queued"
    # The same request goes through once the secret is right: the path above really was the only way in.
    assert harness.webhook(request_id).status_code == 202
    assert harness.wait_status(request_id, "succeeded")["attempts"] == 1


def test_duplicate_webhooks_process_the_request_once(
    start_processor: Callable[..., Harness], make_user
) -> None:
    harness = start_processor(listen=False, sweep_interval_seconds=3600)
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())])

    for _ in range(3):
        assert harness.webhook(request_id).status_code == 202

    row = harness.wait_status(request_id, "succeeded")
    assert row["attempts"] == 1


def test_listen_alone_wakes_the_worker(start_processor: Callable[..., Harness], make_user) -> None:
    harness = start_processor(listen=True, sweep_interval_seconds=3600)
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())])
    assert harness.wait_status(request_id, "succeeded", "failed")["status"] == "succeeded"


def test_sweep_alone_finds_requests_whose_wakeups_were_lost(
    start_processor: Callable[..., Harness], make_user
) -> None:
    harness = start_processor(listen=False, sweep_interval_seconds=0.3)
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())])
    assert harness.wait_status(request_id, "succeeded", "failed")["status"] == "succeeded"


def test_bad_image_fails_with_its_reason_and_the_next_request_succeeds(
    start_processor: Callable[..., Harness], make_user
) -> None:
    harness = start_processor()
    user = make_user()
    truncated = png_bytes()[:40]
    bad = harness.insert(user, [harness.upload(user, "bad.png", truncated)])
    good = harness.insert(user, [harness.upload(user, "good.png", png_bytes())])

    bad_row = harness.wait_status(bad, "failed", "succeeded")
    assert bad_row["status"] == "failed"
    assert bad_row["error_code"] == "truncated_image"
    assert bad_row["attempts"] == 1  # permanent: no retry
    assert bad_row["output_path"] is None
    assert harness.wait_status(good, "succeeded", "failed")["status"] == "succeeded"


def test_transient_storage_fault_is_retried(start_processor: Callable[..., Harness], make_user) -> None:
    harness = start_processor()
    user = make_user()
    path = harness.upload(user, "a.png", png_bytes())
    harness.storage.faults.fail_next(2, 503, method="GET", path=r"/object/edit-inputs/")
    harness.storage.faults.cut_next_downloads(1)

    request_id = harness.insert(user, [path])

    row = harness.wait_status(request_id, "succeeded", "failed")
    assert row["status"] == "succeeded", row["error"]
    assert row["attempts"] == 1
    assert harness.storage.faults.count("GET", r"/object/edit-inputs/") >= 4


def test_cancel_mid_edit_ends_canceled_without_output(
    start_processor: Callable[..., Harness], tiny_editor: Editor, make_user
) -> None:
    gated = GatedEditor(tiny_editor, pause_at=1)
    harness = start_processor(editor=gated)
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())], num_inference_steps=6)
    assert wait_for(lambda: gated.reached.is_set(), what="the edit to reach step 1")

    with acting_as(harness.db, "authenticated", user) as conn:
        canceled = conn.execute("select cancel_edit_request(%s) as ok", (request_id,)).fetchone()
    assert canceled is not None and canceled["ok"] is True

    worker = harness.service.worker
    assert worker is not None
    wait_for(lambda: not worker.busy, what="the worker to stop the edit")
    row = harness.row(request_id)
    assert row["status"] == "canceled"
    assert row["output_path"] is None
    assert harness.db.execute(
        "select count(*) as n from storage.objects where bucket_id = 'edit-outputs'"
    ).fetchone() == {"n": 0}
    # The worker is free again: the next request goes through.
    gated.release.set()
    nxt = harness.insert(user, [harness.upload(user, "b.png", png_bytes())])
    assert harness.wait_status(nxt, "succeeded", "failed")["status"] == "succeeded"


def test_readiness_and_metrics(start_processor: Callable[..., Harness], make_user) -> None:
    harness = start_processor()
    user = make_user()
    request_id = harness.insert(user, [harness.upload(user, "a.png", png_bytes())])
    harness.wait_status(request_id, "succeeded")

    assert httpx.get(f"{harness.served.url}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{harness.served.url}/readyz")
    assert ready.status_code == 200 and ready.json()["state"] in ("ready", "busy")
    metrics = wait_for(
        lambda: (
            (m := httpx.get(f"{harness.served.url}/metrics", headers=METRICS_HEADERS).text)
            and 'edit_processor_queue_depth{status="succeeded"} 1.0' in m
            and m
        ),
        what="queue depth in /metrics",
    )
    assert 'edit_processor_jobs_total{outcome="succeeded",reason="ok"} 1.0' in metrics
    assert 'edit_processor_stage_seconds_count{stage="denoising"} 1.0' in metrics
    assert "edit_processor_claim_latency_seconds_count" in metrics
    assert "edit_processor_oldest_queued_age_seconds 0.0" in metrics


def test_readiness_reports_setup_failure_without_its_details(
    database_url: str, storage_server: StorageServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Editor:
        raise RuntimeError("no such model at /srv/models/secret-path")

    settings = load_settings(
        database_url=database_url,
        supabase_url=storage_server.url,
        supabase_service_role_key=storage_server.service_key,
        webhook_secret=WEBHOOK_SECRET,
    )
    service = ProcessorService(
        worker_config(settings),
        queue=PostgresJobQueue(database_url),
        storage=storage_server.adapter(),
        editor_factory=broken,
    )
    with serve_in_thread(create_app(service, webhook_secret=settings.webhook_secret)) as served:
        response = wait_for(
            lambda: (r := httpx.get(f"{served.url}/readyz")).json()["state"] == "setup_failed" and r,
            what="setup_failed",
        )
        assert response.status_code == 503
        # Anyone may call /readyz: the exception (paths, hosts) goes to the log, not to them.
        assert "secret-path" not in response.text and "no such model" not in response.text
        assert any("secret-path" in (record.exc_text or record.getMessage()) for record in caplog.records)
        assert httpx.get(f"{served.url}/healthz").status_code == 200
