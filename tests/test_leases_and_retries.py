"""Heartbeats, completion, failure, release and lease expiry: every write fenced by owner and status."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

Row = dict[str, Any]


def call(db: psycopg.Connection[Row], sql: str, *args: Any) -> Any:
    row = db.execute(f"select {sql} as v", args).fetchone()
    assert row is not None
    return row["v"]


def row(db: psycopg.Connection[Row], request_id: uuid.UUID) -> Row:
    found = db.execute("select * from edit_requests where id = %s", (request_id,)).fetchone()
    assert found is not None
    return found


@pytest.fixture
def claimed(db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]) -> uuid.UUID:
    request_id = add_request()
    db.execute("select * from claim_edit_request('w1', 120, %s)", (request_id,))
    return request_id


def expire(db: psycopg.Connection[Row], request_id: uuid.UUID) -> None:
    db.execute(
        "update edit_requests set lease_expires_at = now() - interval '1 second' where id = %s", (request_id,)
    )


def test_heartbeat_extends_the_lease_and_records_progress(
    db: psycopg.Connection[Row], claimed: uuid.UUID
) -> None:
    db.execute(
        "update edit_requests set lease_expires_at = now() + interval '5 seconds' where id = %s", (claimed,)
    )
    assert call(db, "heartbeat_edit_request(%s, 'w1', 0.4, 300)", claimed) == "ok"
    current = row(db, claimed)
    assert current["progress"] == pytest.approx(0.4)
    left = call(
        db, "extract(epoch from (select lease_expires_at from edit_requests where id = %s) - now())", claimed
    )
    assert 290 < left <= 300


def test_progress_only_goes_up_and_stays_in_range(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    call(db, "heartbeat_edit_request(%s, 'w1', 0.6)", claimed)
    call(db, "heartbeat_edit_request(%s, 'w1', 0.2)", claimed)
    assert row(db, claimed)["progress"] == pytest.approx(0.6)
    call(db, "heartbeat_edit_request(%s, 'w1', 7)", claimed)
    assert row(db, claimed)["progress"] == pytest.approx(1.0)


def test_heartbeat_from_another_worker_is_lost(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    assert call(db, "heartbeat_edit_request(%s, 'w2', 0.5)", claimed) == "lost"
    assert row(db, claimed)["progress"] == 0


def test_heartbeat_of_a_canceled_row_says_canceled(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    assert call(db, "cancel_edit_request(%s)", claimed) is True
    assert call(db, "heartbeat_edit_request(%s, 'w1', 0.5)", claimed) == "canceled"
    assert call(db, "heartbeat_edit_request(%s, 'w2', 0.5)", claimed) == "lost"


def test_complete_records_the_result(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    assert call(db, "complete_edit_request(%s, 'w1', 'u/x.png', '{\"seed\": 3}'::jsonb)", claimed) is True
    done = row(db, claimed)
    assert (done["status"], done["progress"], done["output_path"], done["result"]) == (
        "succeeded",
        1,
        "u/x.png",
        {"seed": 3},
    )
    assert done["finished_at"] is not None and done["lease_expires_at"] is None


def test_a_stale_worker_cannot_complete_over_the_new_owner(
    db: psycopg.Connection[Row], claimed: uuid.UUID
) -> None:
    expire(db, claimed)
    db.execute("select * from claim_edit_request('w2', 120)")
    assert call(db, "complete_edit_request(%s, 'w1', 'stale.png')", claimed) is False
    assert call(db, "fail_edit_request(%s, 'w1', 'stale failure', false)", claimed) is None
    assert call(db, "release_edit_request(%s, 'w1')", claimed) is False
    current = row(db, claimed)
    assert (current["status"], current["claimed_by"], current["output_path"]) == ("processing", "w2", None)
    assert call(db, "complete_edit_request(%s, 'w2', 'fresh.png')", claimed) is True
    assert row(db, claimed)["output_path"] == "fresh.png"


def test_complete_is_only_for_processing_rows(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    assert call(db, "complete_edit_request(%s, 'w1', 'a.png')", claimed) is True
    assert call(db, "complete_edit_request(%s, 'w1', 'b.png')", claimed) is False
    assert row(db, claimed)["output_path"] == "a.png"


def test_retryable_failure_requeues_with_back_off(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    assert (
        call(db, "fail_edit_request(%s, 'w1', 'storage down', true, 'storage_unavailable')", claimed)
        == "queued"
    )
    current = row(db, claimed)
    assert current["status"] == "queued" and current["claimed_by"] is None
    assert (current["error"], current["error_code"]) == ("storage down", "storage_unavailable")
    delay = call(
        db, "extract(epoch from (select next_attempt_at from edit_requests where id = %s) - now())", claimed
    )
    assert 7 <= delay <= 12.5  # 10 s ± 25 % jitter after the first attempt
    assert db.execute("select * from claim_edit_request('w2')").fetchone() is None  # not due yet


def test_back_off_grows_and_the_attempts_cap_fails_the_request(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request(max_attempts=3)
    delays = []
    for attempt in range(1, 4):
        db.execute("update edit_requests set next_attempt_at = null where id = %s", (request_id,))
        claimed = db.execute("select * from claim_edit_request('w', 120, %s)", (request_id,)).fetchone()
        assert claimed is not None and claimed["attempts"] == attempt
        status = call(db, "fail_edit_request(%s, 'w', 'flaky', true, 'model_error')", request_id)
        if attempt < 3:
            assert status == "queued"
            delays.append(
                call(
                    db,
                    "extract(epoch from (select next_attempt_at from edit_requests where id = %s) - now())",
                    request_id,
                )
            )
        else:
            assert status == "failed"
    assert delays[1] > delays[0]
    final = row(db, request_id)
    assert (final["status"], final["attempts"], final["error_code"]) == ("failed", 3, "model_error")


def test_permanent_failure_fails_at_once(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    assert (
        call(db, "fail_edit_request(%s, 'w1', 'not an image', false, 'unknown_format')", claimed) == "failed"
    )
    current = row(db, claimed)
    assert (current["status"], current["attempts"], current["error_code"]) == ("failed", 1, "unknown_format")
    assert current["finished_at"] is not None


def test_release_gives_the_attempt_back(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    assert call(db, "release_edit_request(%s, 'w1')", claimed) is True
    current = row(db, claimed)
    assert (current["status"], current["attempts"], current["claimed_by"]) == ("queued", 0, None)
    again = db.execute("select * from claim_edit_request('w2')").fetchone()
    assert again is not None and again["attempts"] == 1


def test_requeue_expired_requeues_or_fails(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    retry = add_request()
    last = add_request(max_attempts=1)
    for request_id in (retry, last):
        db.execute("select * from claim_edit_request('dead', 120, %s)", (request_id,))
        expire(db, request_id)

    assert call(db, "requeue_expired_edit_requests()") == 2

    assert (row(db, retry)["status"], row(db, retry)["error_code"]) == ("queued", "lease_expired")
    failed = row(db, last)
    assert (failed["status"], failed["error_code"]) == ("failed", "lease_expired")
    assert call(db, "requeue_expired_edit_requests()") == 0


def test_live_leases_are_left_alone(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    assert call(db, "requeue_expired_edit_requests()") == 0
    assert row(db, claimed)["status"] == "processing"


def test_operators_retry_a_failed_request(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    call(db, "fail_edit_request(%s, 'w1', 'bad', false, 'unknown_format')", claimed)
    assert call(db, "retry_edit_request(%s)", claimed) is True
    current = row(db, claimed)
    assert (current["status"], current["attempts"], current["error"], current["finished_at"]) == (
        "queued",
        0,
        None,
        None,
    )
    assert call(db, "retry_edit_request(%s)", claimed) is False  # only failed or canceled rows
