"""Migrations applied to a database in use: rows of every status survive each later migration intact."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from processor.devtools import localdb
from tests import tiers
from tests.conftest import ADMIN_DSN

Row = dict[str, Any]
CREATION = "20261125000200_creation_and_sizes.sql"


@contextmanager
def migrated_up_to(migration: str) -> Iterator[psycopg.Connection[Row]]:
    """A scratch database migrated up to (not including) ``migration``."""
    files = localdb.migration_files()
    earlier = [path for path in files if path.name < migration]
    assert migration in {path.name for path in files} and earlier
    name = f"qep_migration_{uuid.uuid4().hex[:12]}"
    dsn = localdb.create_database(ADMIN_DSN, name)
    try:
        localdb.apply_sql_files(dsn, [localdb.PLATFORM_SQL, *earlier])
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            yield conn
    finally:
        localdb.drop_database(ADMIN_DSN, name)


@pytest.fixture
@tiers.needs("database")
def before_creation() -> Iterator[psycopg.Connection[Row]]:
    """A database migrated up to (not including) the creation migration."""
    with migrated_up_to(CREATION) as conn:
        yield conn


def insert(conn: psycopg.Connection[Row], user: uuid.UUID, path: str) -> uuid.UUID:
    row = conn.execute(
        "insert into edit_requests (user_id, prompt, input_paths, seed) values (%s, 'x', %s, 1) returning id",
        (user, [path]),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def claim(conn: psycopg.Connection[Row], request_id: uuid.UUID) -> None:
    assert conn.execute("select id from claim_edit_request('w', 60, %s)", (request_id,)).fetchone()


def test_rows_of_every_status_survive_the_creation_migration(
    before_creation: psycopg.Connection[Row],
) -> None:
    conn = before_creation
    user_row = conn.execute("insert into auth.users (email) values ('m@x.test') returning id").fetchone()
    assert user_row is not None
    user = user_row["id"]
    for index in range(5):
        conn.execute(
            "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)",
            (f"{user}/{index}.png",),
        )
    queued = insert(conn, user, f"{user}/0.png")
    awaiting = insert(conn, user, f"{user}/missing.png")
    processing = insert(conn, user, f"{user}/1.png")
    claim(conn, processing)
    succeeded = insert(conn, user, f"{user}/2.png")
    claim(conn, succeeded)
    conn.execute("select complete_edit_request(%s, 'w', 'out.png', '{\"seed\": 1}')", (succeeded,))
    failed = insert(conn, user, f"{user}/3.png")
    claim(conn, failed)
    conn.execute("select fail_edit_request(%s, 'w', 'bad image', false, 'unknown_format')", (failed,))
    canceled = insert(conn, user, f"{user}/4.png")
    conn.execute("select cancel_edit_request(%s)", (canceled,))
    before = {row["id"]: row for row in conn.execute("select * from edit_requests").fetchall()}
    assert {row["status"] for row in before.values()} == {
        "queued", "awaiting_image", "processing", "succeeded", "failed", "canceled"
    }  # fmt: skip

    localdb.apply_sql_files(
        conn.info.dsn, [path for path in localdb.migration_files() if path.name >= CREATION]
    )

    after = {row["id"]: row for row in conn.execute("select * from edit_requests").fetchall()}
    assert after.keys() == before.keys()
    for request_id, old in before.items():
        new = after[request_id]
        assert {key: new[key] for key in old} == old
        assert (new["width"], new["height"], new["base"], new["base_color"]) == (
            None,
            None,
            "blank",
            "#ffffff",
        )
    # The machine keeps working on the old rows: the queued one is claimed, the awaiting one wakes.
    claim(conn, queued)
    conn.execute(
        "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (f"{user}/missing.png",)
    )
    assert conn.execute("select status from edit_requests where id = %s", (awaiting,)).fetchone() == {
        "status": "queued"
    }
    # Applying it again changes nothing (guards against a hand-run psql -f twice).
    localdb.apply_sql_files(
        conn.info.dsn, [path for path in localdb.migration_files() if path.name == CREATION]
    )
    assert conn.execute("select count(*) as n from edit_requests").fetchone() == {"n": len(before)}


RULES = "20261201000100_one_source_of_truth.sql"


@pytest.fixture
@tiers.needs("database")
def before_rules() -> Iterator[psycopg.Connection[Row]]:
    """A database migrated up to (not including) the one-source-of-truth migration."""
    with migrated_up_to(RULES) as conn:
        yield conn


def test_rows_of_every_status_survive_the_rules_migration(before_rules: psycopg.Connection[Row]) -> None:
    conn = before_rules
    user_row = conn.execute("insert into auth.users (email) values ('r@x.test') returning id").fetchone()
    assert user_row is not None
    user = user_row["id"]
    for index in range(8):
        conn.execute(
            "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)",
            (f"{user}/{index}.png",),
        )

    def add(path: str, **columns: Any) -> uuid.UUID:
        values = {"user_id": user, "prompt": "x", "input_paths": [path], "seed": 1, **columns}
        row = conn.execute(
            f"insert into edit_requests ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) "
            "returning id",
            tuple(values.values()),
        ).fetchone()
        assert row is not None
        return uuid.UUID(str(row["id"]))

    # Rows the new rules accept, one of each status...
    queued = add(f"{user}/0.png")
    awaiting = add(f"{user}/missing.png")
    processing = add(f"{user}/1.png")
    claim(conn, processing)
    succeeded = add(f"{user}/2.png")
    claim(conn, succeeded)
    conn.execute("select complete_edit_request(%s, 'w', 'out.png', '{\"seed\": 1}')", (succeeded,))
    failed = add(f"{user}/3.png")
    claim(conn, failed)
    conn.execute("select fail_edit_request(%s, 'w', 'bad image', false, 'unknown_format')", (failed,))
    canceled = add(f"{user}/4.png")
    conn.execute("select cancel_edit_request(%s)", (canceled,))
    # ...and rows they refuse: still waiting or running, and finished (one step, a blank prompt,
    # a code outside the enumeration that an operator wrote by hand).
    one_step_queued = add(f"{user}/5.png", num_inference_steps=1)
    blank_awaiting = add(f"{user}/missing-too.png", prompt="   ")
    one_step_processing = add(f"{user}/6.png", num_inference_steps=1)
    claim(conn, one_step_processing)
    one_step_failed = add(f"{user}/7.png", num_inference_steps=1)
    claim(conn, one_step_failed)
    conn.execute(
        "select fail_edit_request(%s, 'w', 'NaN sigmas', false, 'invalid_parameter')", (one_step_failed,)
    )
    odd_code = add(f"{user}/0.png")
    conn.execute("update edit_requests set status = 'canceled', finished_at = now(), error_code = 'by_hand' "
                 "where id = %s", (odd_code,))  # fmt: skip
    before = {row["id"]: row for row in conn.execute("select * from edit_requests").fetchall()}
    assert {row["status"] for row in before.values()} == {
        "queued", "awaiting_image", "processing", "succeeded", "failed", "canceled"
    }  # fmt: skip

    localdb.apply_sql_files(conn.info.dsn, [path for path in localdb.migration_files() if path.name >= RULES])

    # Columns later migrations add (error_message) are left out of the comparison.
    after = {
        row["id"]: {name: value for name, value in row.items() if name in before[row["id"]]}
        for row in conn.execute("select * from edit_requests").fetchall()
    }
    assert after.keys() == before.keys()
    # Finished rows and rows the rules accept are untouched (an old one-step failure stays history).
    for request_id in (queued, awaiting, processing, succeeded, failed, canceled, one_step_failed):
        assert after[request_id] == before[request_id]
    # Waiting and running rows the rules refuse are failed with the engine's reason.
    for request_id, code in (
        (one_step_queued, "invalid_parameter"),
        (blank_awaiting, "invalid_prompt"),
        (one_step_processing, "invalid_parameter"),
    ):
        row = after[request_id]
        assert (row["status"], row["error_code"], row["lease_expires_at"]) == ("failed", code, None)
        assert row["finished_at"] is not None and "20261201000100" in row["error"]
    # A code outside the enumeration becomes the generic one; the old one stays readable.
    assert after[odd_code]["error_code"] == "error" and "by_hand" in after[odd_code]["error"]
    # Every new constraint is validated, so no later update of an old row can trip over one.
    constraints = conn.execute(
        "select conname, convalidated from pg_constraint where conname in ('edit_requests_steps_within_rules', "
        "'edit_requests_prompt_not_blank', 'edit_requests_input_count', 'edit_requests_error_code_known')"
    ).fetchall()
    assert len(constraints) == 4 and all(row["convalidated"] for row in constraints)
    conn.execute("delete from auth.users where id = %s", (user,))  # on delete set null updates every row
    with pytest.raises(psycopg.errors.CheckViolation, match="edit_requests_steps_within_rules"):
        add(f"{user}/0.png", user_id=None, num_inference_steps=1)
    with pytest.raises(psycopg.errors.CheckViolation, match="edit_requests_prompt_not_blank"):
        add(f"{user}/0.png", user_id=None, prompt=" \t")
    # An operator's retry of the old one-step failure is refused: it could only fail again.
    with pytest.raises(psycopg.errors.CheckViolation, match="edit_requests_steps_within_rules"):
        conn.execute("select retry_edit_request(%s)", (one_step_failed,))
    # The machine keeps working on the old rows: the queued one is claimed, the running one completes.
    claim(conn, queued)
    assert conn.execute(
        "select complete_edit_request(%s, 'w', 'o.png', '{}') as ok", (processing,)
    ).fetchone() == {"ok": True}
    # Applying it again changes nothing.
    localdb.apply_sql_files(conn.info.dsn, [path for path in localdb.migration_files() if path.name == RULES])
    assert conn.execute("select count(*) as n from edit_requests").fetchone() == {"n": len(before)}
