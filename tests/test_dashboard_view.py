"""The dashboard view: per-hour counts, wait and processing percentiles, failure rate; users see their own."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import acting_as

Row = dict[str, Any]


def test_hourly_figures(db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]) -> None:
    finished = [add_request() for _ in range(4)]
    add_request()  # still queued
    for index, request_id in enumerate(finished):
        db.execute("select * from claim_edit_request('w', 120, %s)", (request_id,))
        if index < 3:
            db.execute("select complete_edit_request(%s, 'w', 'o.png')", (request_id,))
        else:
            db.execute("select fail_edit_request(%s, 'w', 'bad', false, 'unknown_format')", (request_id,))
    # Known durations: waited 10 s, processed 20 s.
    db.execute(
        "update edit_requests set started_at = created_at + interval '10 seconds', "
        "finished_at = created_at + interval '30 seconds' where status in ('succeeded', 'failed')"
    )

    [hour] = db.execute("select * from edit_requests_hourly").fetchall()

    assert (hour["requests"], hour["queued"], hour["succeeded"], hour["failed"]) == (5, 1, 3, 1)
    assert hour["queue_wait_p50_s"] == pytest.approx(10)
    assert hour["processing_p95_s"] == pytest.approx(20)
    assert hour["failure_rate"] == pytest.approx(0.25)


def test_users_see_only_their_own_figures(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID], make_user: Callable[[], uuid.UUID]
) -> None:
    add_request()
    stranger = make_user()
    with acting_as(db, "authenticated", stranger) as conn:
        assert conn.execute("select * from edit_requests_hourly").fetchall() == []
