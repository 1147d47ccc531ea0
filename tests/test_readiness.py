"""Storage-triggered readiness: a request is queued once all its input objects are stored, in either order."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.conftest import OWNER

Row = dict[str, Any]


def store(db: psycopg.Connection[Row], name: str, bucket: str = "edit-inputs") -> None:
    db.execute("insert into storage.objects (bucket_id, name) values (%s, %s)", (bucket, name))


def status(db: psycopg.Connection[Row], request_id: uuid.UUID) -> str:
    row = db.execute("select status from edit_requests where id = %s", (request_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def test_inserted_after_upload_starts_queued(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    assert status(db, add_request()) == "queued"


def test_inserted_before_upload_waits_then_queues_on_the_last_object(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    paths = [f"{OWNER}/one.png", f"{OWNER}/two.png"]
    request_id = add_request(stored=False, input_paths=paths)
    assert status(db, request_id) == "awaiting_image"
    store(db, paths[0])
    assert status(db, request_id) == "awaiting_image"
    store(db, paths[1])
    assert status(db, request_id) == "queued"


def test_an_upsert_over_an_existing_object_also_counts(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    path = f"{OWNER}/up.png"
    store(db, path)
    # A row inserted while the object exists but whose trigger was missed (e.g. created before this
    # migration) must still become ready when the object is overwritten: an UPDATE on storage.objects.
    request_id = add_request(stored=False, input_paths=[path])
    db.execute("update edit_requests set status = 'awaiting_image' where id = %s", (request_id,))
    db.execute("update storage.objects set version = 'v2' where name = %s", (path,))
    assert status(db, request_id) == "queued"


def test_objects_in_another_bucket_do_not_count(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    path = f"{OWNER}/x.png"
    request_id = add_request(stored=False, input_paths=[path])
    store(db, path, bucket="edit-outputs")
    assert status(db, request_id) == "awaiting_image"


def test_the_sweep_promotes_rows_that_missed_the_trigger(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    db.execute("update edit_requests set status = 'awaiting_image' where id = %s", (request_id,))
    assert db.execute("select requeue_expired_edit_requests() as n").fetchone() == {"n": 1}
    assert status(db, request_id) == "queued"


def test_concurrent_upload_and_insert_never_strand_the_request(
    database_url: str, db: psycopg.Connection[Row]
) -> None:
    """Upload and insert committed at the same moment from two sessions, many times over."""
    db.execute("insert into auth.users (id) values (%s) on conflict do nothing", (OWNER,))
    rounds = 40
    ids = []
    with (
        psycopg.connect(database_url, row_factory=dict_row) as uploader,
        psycopg.connect(database_url, row_factory=dict_row) as inserter,
    ):
        for index in range(rounds):
            path = f"{OWNER}/race-{index}.png"
            request_id = uuid.uuid4()
            ids.append(request_id)
            barrier = threading.Barrier(2)

            def upload(path: str = path, barrier: threading.Barrier = barrier) -> None:
                uploader.execute(
                    "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (path,)
                )
                barrier.wait()
                uploader.commit()

            def insert(
                path: str = path, request_id: uuid.UUID = request_id, barrier: threading.Barrier = barrier
            ) -> None:
                barrier.wait()
                inserter.execute(
                    "insert into edit_requests (id, user_id, prompt, input_paths) values (%s, %s, 'x', %s)",
                    (request_id, OWNER, [path]),
                )
                inserter.commit()

            threads = [threading.Thread(target=upload), threading.Thread(target=insert)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    stranded = db.execute(
        "select count(*) as n from edit_requests where id = any(%s) and status <> 'queued'", (ids,)
    ).fetchone()
    assert stranded == {"n": 0}
