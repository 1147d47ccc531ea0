"""Real worker processes (`edit-processor worker`): sharing a queue, killed mid-edit, stopped with SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import httpx
import psycopg

from tests.conftest import (
    DEADLINE,
    Harness,
    StorageServer,
    free_port,
    insert_requests,
    upload,
    wait_for,
)

Row = dict[str, Any]


def output_objects(db: psycopg.Connection[Row]) -> int:
    """Edited images in edit-outputs (live previews, `.preview.*`, are not outputs)."""
    row = db.execute(
        "select count(*) as n from storage.objects where bucket_id = 'edit-outputs' and name not like '%.preview.%'"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def preview_objects(db: psycopg.Connection[Row]) -> int:
    row = db.execute(
        "select count(*) as n from storage.objects where bucket_id = 'edit-outputs' and name like '%.preview.%'"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_two_processes_share_the_requests_and_each_is_finished_once(
    db: psycopg.Connection[Row],
    storage_server: StorageServer,
    spawn_worker: Callable[..., Any],
    make_user: Any,
) -> None:
    ports = {"proc-a": free_port(), "proc-b": free_port()}
    for worker_id, port in ports.items():
        spawn_worker(worker_id, worker_health_port=port, host="127.0.0.1")
    for worker_id, port in ports.items():  # both listening before the first request exists
        wait_for(lambda port=port: ready(port), what=f"{worker_id} ready (model loaded)")
    user = make_user()
    ids = insert_requests(db, user, upload(storage_server, user), 24, num_inference_steps=2)

    wait_for(
        lambda: (
            db.execute("select count(*) as n from edit_requests where status = 'succeeded'").fetchone()
            == {"n": 24}
        ),
        what="all 24 requests to succeed",
    )
    rows = db.execute("select claimed_by, attempts, output_path from edit_requests").fetchall()
    # The guarantee is one success and one output per request. Not one attempt each: the workers'
    # leases are 3 s, and on a loaded machine a lease can lapse mid-edit and the other worker claim
    # the request again (the first one's late writes are then refused).
    assert output_objects(db) == 24
    assert sorted(r["output_path"] for r in rows) == sorted(f"{user}/{i}.png" for i in ids)
    assert all(r["attempts"] >= 1 for r in rows)
    assert {r["claimed_by"] for r in rows} == {"proc-a", "proc-b"}  # both were idle and listening


def test_a_worker_killed_mid_edit_is_replaced_after_its_lease(
    db: psycopg.Connection[Row],
    storage_server: StorageServer,
    spawn_worker: Callable[..., Any],
    start_processor: Callable[..., Harness],
    make_user: Any,
) -> None:
    user = make_user()
    [request_id] = insert_requests(db, user, upload(storage_server, user), 1, num_inference_steps=100)
    doomed = spawn_worker("doomed")
    wait_for(
        lambda: db.execute(
            "select 1 from edit_requests where id = %s and status = 'processing' and progress > 0",
            (request_id,),
        ).fetchone(),
        what="the edit to be under way",
    )
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    assert db.execute("select status, claimed_by from edit_requests").fetchone() == {
        "status": "processing",
        "claimed_by": "doomed",
    }

    # The killed worker's lease is 3 s (spawn_worker); the rescuer's own is the long default, so a
    # loaded machine cannot make it lapse mid-edit too.
    rescuer = start_processor(heartbeat_interval_seconds=0.5, sweep_interval_seconds=0.3)
    row = rescuer.wait_status(request_id, "succeeded", "failed")

    assert row["status"] == "succeeded"
    assert row["attempts"] == 2  # the killed attempt counted
    assert row["claimed_by"] == rescuer.settings.worker_id
    assert output_objects(db) == 1
    # The killed attempt's preview was overwritten by the rescuer's, which deletes it once final.
    wait_for(lambda: preview_objects(db) == 0, what="no preview left")


def test_sigterm_gives_an_unfinished_job_back_without_using_an_attempt(
    db: psycopg.Connection[Row],
    storage_server: StorageServer,
    spawn_worker: Callable[..., Any],
    make_user: Any,
) -> None:
    user = make_user()
    [request_id] = insert_requests(db, user, upload(storage_server, user), 1, num_inference_steps=100)
    worker = spawn_worker("leaving", shutdown_grace_seconds=0, lease_seconds=int(DEADLINE))
    wait_for(
        lambda: db.execute(
            "select 1 from edit_requests where id = %s and status = 'processing' and progress > 0",
            (request_id,),
        ).fetchone(),
        what="the edit to be under way",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(DEADLINE) == 0

    row = db.execute("select status, attempts, claimed_by from edit_requests").fetchone()
    assert row == {"status": "queued", "attempts": 0, "claimed_by": None}


def test_sigterm_lets_a_job_finish_within_the_grace_period(
    db: psycopg.Connection[Row],
    storage_server: StorageServer,
    spawn_worker: Callable[..., Any],
    make_user: Any,
) -> None:
    user = make_user()
    # 100 steps at 256²: long enough (seconds, not a fraction of one) to be seen under way.
    [request_id] = insert_requests(
        db, user, upload(storage_server, user), 1, num_inference_steps=100, width=256, height=256
    )
    # A lease far longer than the edit: this test is about the grace period, not a lapsed lease.
    worker = spawn_worker("patient", shutdown_grace_seconds=DEADLINE, lease_seconds=int(DEADLINE))
    wait_for(
        lambda: db.execute(
            "select 1 from edit_requests where id = %s and status = 'processing' and progress > 0",
            (request_id,),
        ).fetchone(),
        what="the edit to be under way",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(2 * DEADLINE) == 0
    row = db.execute("select status, attempts from edit_requests").fetchone()
    assert row == {"status": "succeeded", "attempts": 1}
