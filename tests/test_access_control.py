"""Row level security and grants: users see and create only their own requests, and never set state."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import acting_as

Row = dict[str, Any]


def insert_as(db: psycopg.Connection[Row], user: uuid.UUID, **columns: Any) -> Row | None:
    values = {"prompt": "make it blue", "input_paths": [f"{user}/a.png"], **columns}
    with acting_as(db, "authenticated", user) as conn:
        return conn.execute(
            f"insert into edit_requests ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) returning id, user_id, status",
            tuple(values.values()),
        ).fetchone()


def test_a_user_creates_a_request_owned_by_them(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    row = insert_as(db, user)
    assert row is not None and row["user_id"] == user and row["status"] == "awaiting_image"


@pytest.mark.parametrize(
    "column, value",
    [
        ("status", "succeeded"),
        ("progress", 1.0),
        ("result", '{"x":1}'),
        ("claimed_by", "me"),
        ("attempts", 0),
        ("output_path", "x.png"),
        ("priority", 100),
        ("input_bucket", "other"),
        ("max_attempts", 20),
        ("cost", 0.0),
        ("fair_tag", "2000-01-01"),
    ],
)
def test_users_cannot_set_state_or_bookkeeping(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID], column: str, value: Any
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        insert_as(db, make_user(), **{column: value})


def test_users_cannot_create_requests_for_others_or_from_others_folders(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    alice, bob = make_user(), make_user()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        insert_as(db, alice, user_id=bob, input_paths=[f"{bob}/a.png"])
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        insert_as(db, alice, input_paths=[f"{bob}/a.png"])


def insert_batch_as(db: psycopg.Connection[Row], user: uuid.UUID, **columns: Any) -> Row | None:
    values = {"prompt": "make it blue", "input_paths": [f"{user}/a.png"], **columns}
    with acting_as(db, "authenticated", user) as conn:
        return conn.execute(
            f"insert into edit_batches ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) returning id",
            tuple(values.values()),
        ).fetchone()


@pytest.mark.parametrize("insert", [insert_as, insert_batch_as], ids=["edit_requests", "edit_batches"])
def test_ids_are_the_servers_so_an_insert_says_nothing_about_other_rows(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID], insert: Callable[..., Row | None]
) -> None:
    """Issue 22 item 8: a user who names an id learns nothing from the answer (a duplicate key would
    say that a row with that id exists, whoever owns it)."""
    alice, bob = make_user(), make_user()
    bobs = insert(db, bob)
    assert bobs is not None
    answers = []
    for candidate in (bobs["id"], uuid.uuid4()):  # another user's id, and one nobody has
        with pytest.raises(psycopg.Error) as refused:
            insert(db, alice, id=candidate)
        answers.append((refused.value.sqlstate, refused.value.diag.message_primary))
    assert answers[0] == answers[1]
    assert answers[0][0] == "42501"  # permission denied: the column is not the user's to name
    # Left out, the id is the server's: a random (version 4) UUID.
    mine = insert(db, alice)
    assert mine is not None and uuid.UUID(str(mine["id"])).version == 4


def test_users_read_only_their_own_rows_and_cannot_update_or_delete(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    alice, bob = make_user(), make_user()
    insert_as(db, alice)
    insert_as(db, bob)
    with acting_as(db, "authenticated", alice) as conn:
        seen = conn.execute("select user_id from edit_requests").fetchall()
    assert [r["user_id"] for r in seen] == [alice]
    for statement in ("update edit_requests set status = 'queued'", "delete from edit_requests"):
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            acting_as(db, "authenticated", alice) as conn,
        ):
            conn.execute(statement)


def test_users_cannot_call_worker_functions(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    for call in (
        "select * from claim_edit_request('me')",
        "select requeue_expired_edit_requests()",
        f"select complete_edit_request('{uuid.uuid4()}', 'me', 'x')",
        f"select retry_edit_request('{uuid.uuid4()}')",
    ):
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            acting_as(db, "authenticated", user) as conn,
        ):
            conn.execute(call)


def test_anon_gets_nothing(db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]) -> None:
    insert_as(db, make_user())
    for statement in ("select * from edit_requests", "select * from edit_requests_hourly"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "anon") as conn:
            conn.execute(statement)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "anon") as conn:
        conn.execute("insert into edit_requests (prompt, input_paths) values ('x', array['a/b.png'])")


def test_service_role_sees_everything_and_runs_the_worker_functions(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID], add_request: Callable[..., uuid.UUID]
) -> None:
    insert_as(db, make_user())
    add_request()
    with acting_as(db, "service_role") as conn:
        assert conn.execute("select count(*) as n from edit_requests").fetchone() == {"n": 2}
        claimed = conn.execute("select * from claim_edit_request('svc')").fetchone()
    assert claimed is not None


def test_the_table_is_published_for_realtime(db: psycopg.Connection[Row]) -> None:
    published = db.execute(
        "select 1 from pg_publication_tables where pubname = 'supabase_realtime' and tablename = 'edit_requests'"
    ).fetchone()
    assert published is not None
