"""What a user may hold in edit-inputs is bounded (max_stored_inputs, max_stored_input_bytes).

Before, a signed-in user could upload straight to Storage without bound: any number of objects, each
within the bucket's file_size_limit, kept until the orphan clean-up. Storage's upload policies now let a
user store more only while they hold less than their limits (counted in ``edit_input_usage`` as Storage
commits and deletes objects), and the REST API asks the same before it uploads for a user.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import psycopg.rows
import psycopg.types.json
import pytest

from processor.devtools import localdb
from processor.domain.reasons import ReasonCode
from tests import tiers
from tests.conftest import ADMIN_DSN, Harness, StorageServer, png_bytes
from tests.test_storage_server import refused, upload

Row = dict[str, Any]


def limit(db: psycopg.Connection[Row], user: uuid.UUID, **limits: int) -> None:
    names = ", ".join(limits)
    marks = ", ".join(["%s"] * len(limits))
    db.execute(
        f"insert into edit_user_limits (user_id, {names}) values (%s, {marks})", (user, *limits.values())
    )


def held(db: psycopg.Connection[Row], user: uuid.UUID) -> tuple[int, int]:
    row = db.execute("select objects, bytes from edit_input_usage where folder = %s", (str(user),)).fetchone()
    return (0, 0) if row is None else (row["objects"], row["bytes"])


def remove(server: StorageServer, token: str, *paths: str) -> list[str]:
    """Storage's bulk delete; the names it deleted."""
    response = httpx.request(
        "DELETE",
        f"{server.url}/storage/v1/object/edit-inputs",
        json={"prefixes": list(paths)},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    return [item["name"] for item in response.json()]


def test_a_user_at_max_stored_inputs_cannot_upload_more_until_one_is_deleted(
    storage_server: StorageServer, db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user, other = make_user(), make_user()
    limit(db, user, max_stored_inputs=2)
    token = storage_server.token(user)
    for name in ("a.png", "b.png"):
        assert upload(storage_server, token, f"{user}/{name}", b"x" * 100).status_code == 200
    # Before: a third, and a thousandth, were stored.
    refused(upload(storage_server, token, f"{user}/c.png"), "403", "AccessDenied", "Unauthorized")
    assert held(db, user) == (2, 200)  # the refused upload's permission check counted nothing
    assert upload(storage_server, storage_server.token(other), f"{other}/a.png").status_code == 200
    assert remove(storage_server, token, f"{user}/a.png") == [f"{user}/a.png"]  # the user frees space
    assert held(db, user) == (1, 100)
    assert upload(storage_server, token, f"{user}/c.png", b"x" * 7).status_code == 200
    assert held(db, user) == (2, 107)


def test_bytes_are_counted_as_stored_and_an_overwrite_counts_its_new_size(
    storage_server: StorageServer, db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    limit(db, user, max_stored_input_bytes=1000)
    token = storage_server.token(user)
    assert upload(storage_server, token, f"{user}/a.png", b"x" * 10).status_code == 200
    assert upload(storage_server, token, f"{user}/a.png", b"x" * 1500, upsert=True).status_code == 200
    assert held(db, user) == (1, 1500)
    # At the limit: no new object, and no overwrite either (it could grow).
    refused(upload(storage_server, token, f"{user}/b.png", b"x"), "403", "AccessDenied", "Unauthorized")
    refused(
        upload(storage_server, token, f"{user}/a.png", b"x", upsert=True),
        "403",
        "AccessDenied",
        "Unauthorized",
    )
    remove(storage_server, storage_server.service_key, f"{user}/a.png")  # retention's way
    assert held(db, user) == (0, 0)
    assert upload(storage_server, token, f"{user}/b.png", b"x").status_code == 200


def test_the_default_row_bounds_everyone_and_the_service_role_is_not_bounded(
    storage_server: StorageServer, db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    defaults = db.execute(
        "select max_stored_inputs, max_stored_input_bytes from edit_user_limits "
        "where user_id = '00000000-0000-0000-0000-000000000000'"
    ).fetchone()
    assert defaults == {"max_stored_inputs": 10_000, "max_stored_input_bytes": 10 * 2**30}
    db.execute(
        "update edit_user_limits set max_stored_inputs = 1 where user_id = '00000000-0000-0000-0000-000000000000'"
    )
    user = make_user()
    token = storage_server.token(user)
    assert upload(storage_server, token, f"{user}/a.png").status_code == 200
    refused(upload(storage_server, token, f"{user}/b.png"), "403", "AccessDenied", "Unauthorized")
    # The processor (service key) writes outputs and REST's uploads; operators decide, not the policy.
    assert upload(storage_server, storage_server.service_key, f"{user}/b.png").status_code == 200
    assert held(db, user)[0] == 2


def test_users_delete_only_their_own_inputs_and_never_a_live_requests(
    storage_server: StorageServer, db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    alice, bob = make_user(), make_user()
    token = storage_server.token(alice)
    for name in ("done.png", "live.png"):
        assert upload(storage_server, token, f"{alice}/{name}").status_code == 200
    db.execute(
        "insert into edit_requests (user_id, prompt, input_paths) values (%s, 'blue', %s)",
        (alice, [f"{alice}/live.png"]),
    )
    assert remove(storage_server, storage_server.token(bob), f"{alice}/done.png") == []
    assert remove(storage_server, token, f"{alice}/done.png", f"{alice}/live.png") == [f"{alice}/done.png"]
    assert held(db, alice)[0] == 1


def test_users_read_their_own_space_and_nobody_else_writes_it(
    storage_server: StorageServer, db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    from tests.conftest import acting_as

    alice, bob = make_user(), make_user()
    assert upload(storage_server, storage_server.token(alice), f"{alice}/a.png", b"x" * 5).status_code == 200
    with acting_as(db, "authenticated", alice) as conn:
        assert conn.execute("select folder, objects, bytes from edit_input_usage").fetchall() == [
            {"folder": str(alice), "objects": 1, "bytes": 5}
        ]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update edit_input_usage set objects = 0")
    with acting_as(db, "authenticated", bob) as conn:
        assert conn.execute("select * from edit_input_usage").fetchall() == []


MIGRATION = "20261206013000_input_space.sql"


@pytest.fixture
@tiers.needs("database")
def database_before_the_migration() -> Any:
    name = f"qep_space_{uuid.uuid4().hex[:16]}"
    dsn = localdb.create_database(ADMIN_DSN, name)
    try:
        before = [path for path in localdb.migration_files() if path.name < MIGRATION]
        localdb.apply_sql_files(dsn, [localdb.PLATFORM_SQL, *before])
        yield dsn
    finally:
        localdb.drop_database(ADMIN_DSN, name)


def test_the_migration_counts_what_a_deployed_project_already_stores(
    database_before_the_migration: str,
) -> None:
    user = uuid.uuid4()
    with psycopg.connect(
        database_before_the_migration, autocommit=True, row_factory=psycopg.rows.dict_row
    ) as conn:
        for index, size in enumerate((10, 20, None)):
            metadata = None if size is None else psycopg.types.json.Jsonb({"size": size})
            conn.execute(
                "insert into storage.objects (bucket_id, name, metadata) values ('edit-inputs', %s, %s)",
                (f"{user}/{index}.png", metadata),
            )
        conn.execute(
            "insert into storage.objects (bucket_id, name) values ('edit-outputs', %s)", (f"{user}/o.png",)
        )
        localdb.apply_sql_files(
            database_before_the_migration, [p for p in localdb.migration_files() if p.name >= MIGRATION]
        )
        assert held(conn, user) == (3, 30)


@pytest.fixture
def api(start_processor: Callable[..., Harness]) -> Harness:
    return start_processor(rest=True)


def test_rest_refuses_a_user_at_their_space_before_it_decodes_or_uploads(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    limit(api.db, user, max_stored_inputs=1)
    token = api.storage.token(user)
    assert upload(api.storage, token, f"{user}/mine.png", png_bytes()).status_code == 200
    image = base64.b64encode(png_bytes()).decode()
    response = httpx.post(
        f"{api.served.url}/v1/edits",
        json={"prompt": "blue", "image": image},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == ReasonCode.QUOTA_EXCEEDED
    assert "max_stored_inputs (1)" in error["message"]
    stored = api.db.execute("select count(*) as n from storage.objects where name like %s", (f"{user}/%",))
    assert stored.fetchone() == {"n": 1}
