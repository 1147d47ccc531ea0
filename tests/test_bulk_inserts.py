"""One INSERT of many rows, as a signed-in user sends it through PostgREST: each row's readiness and
the path rules hold row by row, and RETURNING shows what the row really is (migration
20261201001300 made this path cheaper; docs/fair-sharing.md has the benchmark)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import DEADLINE, acting_as, wait_for

Row = dict[str, Any]


def stored(db: psycopg.Connection[Row], *names: str) -> None:
    for name in names:
        db.execute("insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (name,))


def test_one_insert_reports_each_rows_readiness_in_returning(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    folder = f"{user}/"
    stored(db, folder + "a.png", folder + "b.png")
    cases = {
        "one present": [folder + "a.png"],
        "one missing": [folder + "missing.png"],
        "two present": [folder + "a.png", folder + "b.png"],
        "one of two missing": [folder + "a.png", folder + "missing.png"],
        "the same path twice": [folder + "b.png", folder + "b.png"],
        "three, one missing": [folder + "a.png", folder + "b.png", folder + "c.png"],
    }
    with acting_as(db, "authenticated", user) as conn:
        rows = conn.execute(
            "insert into edit_requests (prompt, input_paths) "
            "select c.label, c.paths from jsonb_to_recordset(%s::jsonb) as c(label text, paths text[]) "
            "returning prompt, status",
            (psycopg.types.json.Jsonb([{"label": k, "paths": v} for k, v in cases.items()]),),
        ).fetchall()
    returned = {row["prompt"]: row["status"] for row in rows}
    assert returned == {
        "one present": "queued",
        "one missing": "awaiting_image",
        "two present": "queued",
        "one of two missing": "awaiting_image",
        "the same path twice": "queued",
        "three, one missing": "awaiting_image",
    }
    # What RETURNING said is what the table holds.
    held = {row["prompt"]: row["status"] for row in db.execute("select prompt, status from edit_requests")}
    assert held == returned


def test_the_awaiting_rows_of_a_bulk_insert_are_queued_when_their_images_arrive(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    with acting_as(db, "authenticated", user) as conn:
        conn.execute(
            "insert into edit_requests (prompt, input_paths) "
            "select 'x', array[%s || g || '.png'] from generate_series(1, 50) g",
            (f"{user}/",),
        )
    assert db.execute(
        "select count(*) as n from edit_requests where status = 'awaiting_image'"
    ).fetchone() == {"n": 50}
    db.execute(
        "insert into storage.objects (bucket_id, name) select 'edit-inputs', %s || g || '.png' from generate_series(1, 50) g",
        (f"{user}/",),
    )
    assert db.execute("select count(*) as n from edit_requests where status = 'queued'").fetchone() == {
        "n": 50
    }


def waiting_for_a_slot_lock(db: psycopg.Connection[Row]) -> bool:
    return (
        db.execute("select 1 from pg_locks where locktype = 'advisory' and not granted").fetchone()
        is not None
    )


def upload_row(conn: psycopg.Connection[Any], path: str) -> None:
    conn.execute("insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (path,))


def insert_row(conn: psycopg.Connection[Any], path: str) -> None:
    conn.execute("insert into edit_requests (prompt, input_paths) values ('x', %s)", ([path],))


@pytest.mark.parametrize("first", ["upload", "insert"])
def test_an_insert_racing_an_upload_is_queued_whichever_commits_first(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID], first: str
) -> None:
    # The row's look for its inputs and an upload's look for waiting rows both happen under the
    # path's slot lock: neither can miss the other, so the row never waits for an image it has.
    user = make_user()
    path = f"{user}/{first}-first.png"
    claims = f'{{"sub": "{user}", "role": "authenticated"}}'

    def as_user(conn: psycopg.Connection[Any]) -> None:
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        conn.execute("set local role authenticated")

    done: list[str] = []

    def second() -> None:
        with psycopg.connect(db.info.dsn) as conn:  # one transaction, committed on exit
            if first == "upload":
                as_user(conn)
                insert_row(conn, path)
            else:
                upload_row(conn, path)
        done.append("second")

    with psycopg.connect(db.info.dsn) as holder:
        if first == "upload":
            upload_row(holder, path)
        else:
            as_user(holder)
            insert_row(holder, path)
        thread = threading.Thread(target=second)
        thread.start()
        wait_for(lambda: waiting_for_a_slot_lock(db), what="the second one waiting for the slot lock")
    thread.join(DEADLINE)
    assert done == ["second"]
    row = db.execute("select status from edit_requests where input_paths = %s", ([path],)).fetchone()
    assert row == {"status": "queued"}


@pytest.mark.parametrize(
    "paths",
    [
        ["{user}/a.png", None],
        ["{user}/" + "x" * 1100],
        ["{user}/./a.png"],
        ["{user}/a/../b.png"],
        ["{user}/."],
        ["{user}//a.png"],
    ],
)
def test_one_bad_path_in_a_bulk_insert_refuses_the_whole_insert(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID], paths: list[str | None]
) -> None:
    user = make_user()
    bad = [p.format(user=user) if p is not None else None for p in paths]
    with pytest.raises(psycopg.errors.CheckViolation), acting_as(db, "authenticated", user) as conn:
        conn.execute(
            "insert into edit_requests (prompt, input_paths) values ('x', %s), ('x', %s)",
            ([f"{user}/fine.png"], bad),
        )
    assert db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 0}


def test_a_path_in_another_users_folder_refuses_the_whole_insert(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user, other = make_user(), make_user()
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "authenticated", user) as conn:
        conn.execute(
            "insert into edit_requests (prompt, input_paths) values ('x', %s), ('x', %s)",
            ([f"{user}/mine.png"], [f"{user}/mine.png", f"{other}/theirs.png"]),
        )
    assert db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 0}


def test_the_functions_every_inserted_row_calls_stay_cheap(db: psycopg.Connection[Row]) -> None:
    # Not behaviour but the reason bulk inserts are fast: the generated error_message must not
    # call its (non-inlinable) function for rows without a code, and the LoRA check must not run
    # its loop for the default. A later `create or replace` without STRICT would silently cost
    # ~7 µs a row (benchmarks/queue_vs_peers.py shows it).
    strict = db.execute(
        "select proisstrict from pg_proc where oid = 'public.edit_request_reason_message(text)'::regprocedure"
    ).fetchone()
    assert strict == {"proisstrict": True}
    check = db.execute(
        "select pg_get_constraintdef(oid) as d from pg_constraint where conname = 'edit_requests_loras_valid'"
    ).fetchone()
    assert check is not None and "'[]'::jsonb" in str(check["d"])
    # Any other per-row trigger an insert meets has a WHEN clause, so rows that do not need it
    # (no LoRAs, no webhook endpoint) never call it.
    unguarded = db.execute(
        "select tgname from pg_trigger where tgrelid = 'public.edit_requests'::regclass and not tgisinternal "
        "and tgtype & 1 = 1 and tgtype & 4 = 4 and tgqual is null and tgname <> 'edit_requests_before_insert'"
    ).fetchall()
    assert unguarded == []
