"""Heartbeats write the row only when a client would see a change (issue #15, item 4).

Every write of ``edit_requests`` is a Realtime event to every subscriber; a heartbeat every 5 s
while progress stands still used to rewrite the lease and ``updated_at`` each time."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

Row = dict[str, Any]


def version(db: psycopg.Connection[Row], request_id: uuid.UUID) -> Row:
    """The row's xmin (which transaction last wrote it), lease, progress and updated_at."""
    row = db.execute(
        "select xmin::text as xmin, lease_expires_at, progress, updated_at from edit_requests where id = %s",
        (request_id,),
    ).fetchone()
    assert row is not None
    return row


def heartbeat(
    db: psycopg.Connection[Row], request_id: uuid.UUID, progress: float | None, lease: int = 120
) -> str:
    row = db.execute(
        "select heartbeat_edit_request(%s, 'w1', %s::real, %s::int) as answer", (request_id, progress, lease)
    ).fetchone()
    assert row is not None
    return str(row["answer"])


@pytest.fixture
def claimed(db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]) -> uuid.UUID:
    request_id = add_request()
    db.execute("select * from claim_edit_request('w1', 120, %s)", (request_id,))
    return request_id


def test_a_heartbeat_that_changes_nothing_visible_writes_nothing(
    db: psycopg.Connection[Row], claimed: uuid.UUID
) -> None:
    assert heartbeat(db, claimed, 0.25) == "ok"
    moved = version(db, claimed)
    for _ in range(5):
        assert heartbeat(db, claimed, 0.25) == "ok"
        assert heartbeat(db, claimed, None) == "ok"
    assert version(db, claimed) == moved  # same xmin: no new row version, no WAL, no event


def test_progress_is_written_at_once(db: psycopg.Connection[Row], claimed: uuid.UUID) -> None:
    before = version(db, claimed)
    assert heartbeat(db, claimed, 0.5) == "ok"
    after = version(db, claimed)
    assert after["progress"] == pytest.approx(0.5) and after["xmin"] != before["xmin"]
    assert after["updated_at"] > before["updated_at"]


def test_a_lease_running_short_is_renewed_without_moving_updated_at(
    db: psycopg.Connection[Row], claimed: uuid.UUID
) -> None:
    assert heartbeat(db, claimed, 0.25) == "ok"
    db.execute(
        "update edit_requests set lease_expires_at = now() + interval '50 seconds' where id = %s", (claimed,)
    )
    before = version(db, claimed)
    assert heartbeat(db, claimed, 0.25, lease=120) == "ok"  # 50 s left of 120: less than half
    after = version(db, claimed)
    assert after["lease_expires_at"] > before["lease_expires_at"]
    assert after["updated_at"] == before["updated_at"]  # the lease is not something clients see


def test_cancel_and_loss_are_still_answered_without_a_write(
    db: psycopg.Connection[Row], claimed: uuid.UUID
) -> None:
    assert db.execute("select cancel_edit_request(%s) as ok", (claimed,)).fetchone() == {"ok": True}
    assert heartbeat(db, claimed, 0.25) == "canceled"
    other = db.execute(
        "select heartbeat_edit_request(%s, 'someone-else', 0.3::real) as answer", (claimed,)
    ).fetchone()
    assert other == {"answer": "lost"}
