"""cancel_edit_request: users cancel their own waiting or running requests; a running worker hears it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.conftest import OWNER, acting_as, wait_for

Row = dict[str, Any]


def cancel_as(db: psycopg.Connection[Row], user: uuid.UUID, request_id: uuid.UUID) -> bool:
    with acting_as(db, "authenticated", user) as conn:
        row = conn.execute("select cancel_edit_request(%s) as ok", (request_id,)).fetchone()
    assert row is not None
    return bool(row["ok"])


def status(db: psycopg.Connection[Row], request_id: uuid.UUID) -> str:
    row = db.execute("select status from edit_requests where id = %s", (request_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def test_owner_cancels_awaiting_queued_and_processing(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    awaiting = add_request(stored=False)
    queued = add_request()
    running = add_request()
    db.execute("select * from claim_edit_request('w', 120, %s)", (running,))
    for request_id in (awaiting, queued, running):
        assert cancel_as(db, OWNER, request_id) is True
        assert status(db, request_id) == "canceled"


def test_finished_requests_cannot_be_canceled(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    db.execute("select * from claim_edit_request('w', 120, %s)", (request_id,))
    db.execute("select complete_edit_request(%s, 'w', 'out.png')", (request_id,))
    assert cancel_as(db, OWNER, request_id) is False
    assert status(db, request_id) == "succeeded"


def test_another_user_cannot_cancel(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID], make_user: Callable[[], uuid.UUID]
) -> None:
    request_id = add_request()
    assert cancel_as(db, make_user(), request_id) is False
    assert status(db, request_id) == "queued"


def test_anon_cannot_call_cancel(db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]) -> None:
    request_id = add_request()
    try:
        with acting_as(db, "anon") as conn:
            conn.execute("select cancel_edit_request(%s)", (request_id,))
    except psycopg.errors.InsufficientPrivilege:
        assert status(db, request_id) == "queued"
        return
    raise AssertionError("anon could call cancel_edit_request")


def test_canceled_rows_ignore_the_workers_late_writes(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    db.execute("select * from claim_edit_request('w', 120, %s)", (request_id,))
    assert cancel_as(db, OWNER, request_id)
    assert db.execute("select complete_edit_request(%s, 'w', 'x.png') as v", (request_id,)).fetchone() == {
        "v": False
    }
    assert db.execute("select fail_edit_request(%s, 'w', 'x') as v", (request_id,)).fetchone() == {"v": None}
    assert status(db, request_id) == "canceled"


def test_canceling_a_running_request_notifies_the_workers(
    database_url: str, db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    db.execute("select * from claim_edit_request('w', 120, %s)", (request_id,))
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as listener:
        listener.execute("listen edit_requests_cancel")
        assert cancel_as(db, OWNER, request_id)
        received = wait_for(
            lambda: [n.payload for n in listener.notifies(timeout=0.2, stop_after=1)],
            what="a cancel notification",
        )
    assert received == [str(request_id)]
