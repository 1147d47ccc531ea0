"""claim_edit_request: one owner per row, whatever the number of workers; order; recovery."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

Row = dict[str, Any]


def claim(
    db: psycopg.Connection[Row], worker: str, request_id: uuid.UUID | None = None, lease: int = 120
) -> Row | None:
    return db.execute("select * from claim_edit_request(%s, %s, %s)", (worker, lease, request_id)).fetchone()


def test_claim_sets_owner_lease_attempt_and_start(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    row = claim(db, "w1", lease=60)
    assert row is not None
    assert row["id"] == request_id
    assert row["status"] == "processing"
    assert row["claimed_by"] == "w1"
    assert row["attempts"] == 1
    assert row["started_at"] is not None
    lease_left = db.execute(
        "select extract(epoch from lease_expires_at - now()) as s from edit_requests"
    ).fetchone()
    assert lease_left is not None and 55 < lease_left["s"] <= 60


def test_nothing_to_claim_returns_no_row(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    assert claim(db, "w1") is None
    add_request(stored=False)  # awaiting its image: not claimable
    assert claim(db, "w1") is None


def test_a_claimed_row_is_not_claimed_again(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    assert claim(db, "w1", request_id) is not None
    assert claim(db, "w2", request_id) is None  # a duplicate wake-up is harmless
    assert claim(db, "w2") is None


def test_priority_then_age(db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]) -> None:
    old_low = add_request()
    new_high = add_request(priority=5)
    newer_high = add_request(priority=5)
    order = [claim(db, "w")["id"] for _ in range(3)]  # type: ignore[index]
    assert order == [new_high, newer_high, old_low]


def test_claim_by_id_takes_that_row(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    add_request(priority=9)
    wanted = add_request()
    row = claim(db, "w", wanted)
    assert row is not None and row["id"] == wanted


def test_rows_waiting_for_back_off_are_not_due(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    add_request(next_attempt_at="2999-01-01T00:00:00Z")
    assert claim(db, "w") is None


def test_a_lapsed_lease_is_claimed_by_the_next_worker(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    claim(db, "dead-worker")
    db.execute(
        "update edit_requests set lease_expires_at = now() - interval '1 second' where id = %s", (request_id,)
    )

    row = claim(db, "w2")

    assert row is not None and row["id"] == request_id
    assert row["claimed_by"] == "w2"
    assert row["attempts"] == 2


def test_a_lapsed_lease_on_the_last_attempt_is_not_claimed(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request(max_attempts=1)
    claim(db, "dead-worker")
    db.execute(
        "update edit_requests set lease_expires_at = now() - interval '1 second' where id = %s", (request_id,)
    )
    assert claim(db, "w2") is None


def test_worker_id_is_required(db: psycopg.Connection[Row]) -> None:
    try:
        claim(db, "")
    except psycopg.errors.InvalidParameterValue:
        return
    raise AssertionError("an empty worker id was accepted")


def test_concurrent_claimers_claim_each_row_exactly_once(
    database_url: str, db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    rows, claimers = 240, 8
    for _ in range(rows):
        add_request()
    claimed: list[tuple[str, uuid.UUID]] = []
    lock = threading.Lock()
    start = threading.Barrier(claimers)

    def claimer(name: str) -> None:
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
            start.wait()
            while (row := claim(conn, name)) is not None:
                with lock:
                    claimed.append((name, row["id"]))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    ids = [request_id for _, request_id in claimed]
    assert len(ids) == rows
    assert len(set(ids)) == rows
    per_worker = Counter(name for name, _ in claimed)
    assert len(per_worker) > 1  # the work really was shared
    owners = db.execute(
        "select count(distinct claimed_by) as n, max(attempts) as a from edit_requests"
    ).fetchone()
    assert owners is not None and owners["a"] == 1
