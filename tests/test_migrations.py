"""Migrations applied to a database in use: rows of every status survive each later migration intact."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from processor.devtools import localdb
from tests.conftest import ADMIN_DSN

Row = dict[str, Any]
CREATION = "20261125000200_creation_and_sizes.sql"


@pytest.fixture
def before_creation() -> Iterator[psycopg.Connection[Row]]:
    """A database migrated up to (not including) the creation migration."""
    files = localdb.migration_files()
    earlier = [path for path in files if path.name < CREATION]
    assert CREATION in {path.name for path in files} and earlier
    name = f"qep_migration_{uuid.uuid4().hex[:12]}"
    dsn = localdb.create_database(ADMIN_DSN, name)
    try:
        localdb.apply_sql_files(dsn, [localdb.PLATFORM_SQL, *earlier])
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            yield conn
    finally:
        localdb.drop_database(ADMIN_DSN, name)


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
