"""What a signed-in user may read of their rows: through PostgREST (select, insert-then-select) and
through Realtime, which sends every column the subscriber's role may select (supabase.md §12)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import errors

from processor.domain.reasons import REASONS
from tests.conftest import OWNER, acting_as

Row = dict[str, Any]
INTERNAL = (
    "claimed_by",
    "lease_expires_at",
    "attempts",
    "max_attempts",
    "next_attempt_at",
    "error",
    "priority",
)
CLIENT = (
    "id, status, progress, prompt, output_bucket, output_path, error_code, error_message, result, "
    "created_at, started_at, finished_at, updated_at, width, height"
)


@pytest.mark.parametrize("column", INTERNAL)
def test_bookkeeping_and_raw_errors_are_not_selectable_by_users(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID], column: str
) -> None:
    add_request()
    with pytest.raises(errors.InsufficientPrivilege), acting_as(db, "authenticated", OWNER) as conn:
        conn.execute(f"select {column} from public.edit_requests")


def test_realtime_would_send_no_internal_column(db: psycopg.Connection[Row]) -> None:
    # Realtime's apply_rls keeps the columns the subscriber's role may select.
    rows = db.execute(
        "select attname, has_column_privilege('authenticated', 'public.edit_requests', attname, 'SELECT') as visible "
        "from pg_attribute where attrelid = 'public.edit_requests'::regclass and attnum > 0 and not attisdropped"
    ).fetchall()
    visible = {row["attname"] for row in rows if row["visible"]}
    assert not visible & set(INTERNAL)
    assert {"status", "progress", "output_path", "error_code", "error_message", "prompt"} <= visible


def test_insert_then_select_named_columns_works_as_supabase_js_does(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    with acting_as(db, "authenticated", user) as conn:
        row = conn.execute(
            "insert into public.edit_requests (prompt, input_paths) values ('make it blue', %s) "
            "returning id, status, progress",
            ([f"{user}/a.png"],),
        ).fetchone()
    assert row is not None and row["status"] == "awaiting_image"
    with acting_as(db, "authenticated", user) as conn:
        again = conn.execute(
            f"select {CLIENT} from public.edit_requests where id = %s", (row["id"],)
        ).fetchone()
    assert again is not None and again["id"] == row["id"]


def test_a_failed_request_shows_its_owner_the_reason_and_a_message_not_the_raw_error(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    db.execute("select * from public.claim_edit_request('w', 60, %s)", (request_id,))
    db.execute(
        "select public.fail_edit_request(%s, 'w', %s, false, 'comfyui_node_error')",
        (request_id, "LoadImage 12: FileNotFoundError: /srv/comfy/input/secret.png"),
    )
    with acting_as(db, "authenticated", OWNER) as conn:
        row = conn.execute(
            "select error_code, error_message from public.edit_requests where id = %s", (request_id,)
        ).fetchone()
    assert row == {
        "error_code": "comfyui_node_error",
        "error_message": REASONS["comfyui_node_error"].description,
    }


def test_every_reason_code_has_its_message_in_sql(db: psycopg.Connection[Row]) -> None:
    for code, reason in REASONS.items():
        row = db.execute("select public.edit_request_reason_message(%s) as message", (code.value,)).fetchone()
        assert row is not None and row["message"] == reason.description, code
