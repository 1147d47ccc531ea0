"""The stand-in's bulk delete (``DELETE /storage/v1/object/{bucket}``) answers as the real server,
supabase/storage v1.70.6: ``src/http/routes/object/deleteObjects.ts`` (body schema, 200 with the
deleted rows), ``src/storage/object.ts`` ``deleteObjects`` (exact names, batches of 500, as the
caller), ``src/storage/limits.ts`` (1,000 names only with ``REQUEST_HARD_LIMITS_ENABLED``), the
route's ``objectSchema`` serialised by fast-json-stringify (NULL strings as ``""``, dates as
``toISOString``), and its tests ``src/test/object.test.ts`` ("testing deleting multiple objects")."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from processor.devtools.serving import serve_in_thread
from processor.devtools.storage_server import StorageConfig, create_storage_app
from tests.conftest import JWT_SECRET, SERVICE_KEY, StorageServer

Row = dict[str, Any]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def put(server: StorageServer, token: str, path: str, bucket: str = "edit-inputs") -> None:
    httpx.post(
        f"{server.url}/storage/v1/object/{bucket}/{path}",
        headers={"Authorization": f"Bearer {token}"},
        files={"file": ("x.png", b"\x89PNG x", "image/png")},
    ).raise_for_status()


def delete(
    server: StorageServer, token: str | None, body: Any, bucket: str = "edit-inputs"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request("DELETE", f"{server.url}/storage/v1/object/{bucket}", json=body, headers=headers)


def test_the_answer_is_the_deleted_rows_in_object_schema(
    storage_server: StorageServer, make_user: Any
) -> None:
    user = make_user()
    put(storage_server, storage_server.token(user), f"{user}/mine.png")
    put(storage_server, storage_server.service_key, f"{user}/service.png")

    answer = delete(
        storage_server, storage_server.service_key, {"prefixes": [f"{user}/mine.png", f"{user}/service.png"]}
    )

    assert answer.status_code == 200
    rows = sorted(answer.json(), key=lambda row: row["name"])
    assert [set(row) for row in rows] == [
        {
            "name",
            "bucket_id",
            "owner",
            "owner_id",
            "version",
            "id",
            "updated_at",
            "created_at",
            "last_accessed_at",
            "metadata",
            "user_metadata",
        }
    ] * 2
    mine, service = rows
    assert (mine["owner"], mine["owner_id"]) == (str(user), str(user))
    assert (service["owner"], service["owner_id"]) == ("", "")  # NULL through a "string" property
    assert mine["bucket_id"] == "edit-inputs" and mine["metadata"]["mimetype"] == "image/png"
    assert mine["user_metadata"] == {} and uuid.UUID(mine["version"]) and uuid.UUID(mine["id"])
    assert all(
        ISO.match(row[key]) for row in rows for key in ("created_at", "updated_at", "last_accessed_at")
    )


def test_names_are_exact_and_what_is_not_there_is_just_absent(
    storage_server: StorageServer, make_user: Any, db: psycopg.Connection[Row]
) -> None:
    user = make_user()
    put(storage_server, storage_server.token(user), f"{user}/sub/a.png")
    key = storage_server.service_key

    assert delete(storage_server, key, {"prefixes": [f"{user}", f"{user}/", f"{user}/sub"]}).json() == []
    assert delete(storage_server, key, {"prefixes": [f"{user}/nothing.png"]}).json() == []
    unknown_bucket = delete(storage_server, key, {"prefixes": [f"{user}/sub/a.png"]}, bucket="no-such-bucket")
    assert (unknown_bucket.status_code, unknown_bucket.json()) == (200, [])
    assert db.execute(
        "select count(*) as n from storage.objects where name = %s", (f"{user}/sub/a.png",)
    ).fetchone() == {"n": 1}


def test_rls_decides_what_a_user_may_delete(storage_server: StorageServer, make_user: Any) -> None:
    user, other = make_user(), make_user()
    put(storage_server, storage_server.token(user), f"{user}/a.png")
    # Users may delete in their own folder of edit-inputs (supabase/schemas/15_storage.sql), nowhere else.
    theirs = delete(storage_server, storage_server.token(other), {"prefixes": [f"{user}/a.png"]})
    assert (theirs.status_code, theirs.json()) == (200, [])
    anon = delete(storage_server, storage_server.token(role="anon"), {"prefixes": [f"{user}/a.png"]})
    assert (anon.status_code, anon.json()) == (200, [])
    answer = delete(storage_server, storage_server.token(user), {"prefixes": [f"{user}/a.png"]})
    assert answer.status_code == 200
    assert [item["name"] for item in answer.json()] == [f"{user}/a.png"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "body must have required property 'prefixes'"),
        ({"prefixes": []}, "body/prefixes must NOT have fewer than 1 items"),
        ({"prefixes": {"a": 1}}, "body/prefixes must be array"),
        ([], "body must be object"),
    ],
)
def test_a_bad_body_is_fastifys_validation_error(
    storage_server: StorageServer, body: Any, message: str
) -> None:
    answer = delete(storage_server, storage_server.service_key, body)
    assert answer.status_code == 400
    assert answer.json() == {
        "statusCode": "400",
        "code": "InvalidRequest",
        "error": "Error",
        "message": message,
    }


def test_no_authorization_is_refused(storage_server: StorageServer) -> None:
    answer = delete(storage_server, None, {"prefixes": ["a.png"]})
    assert answer.status_code == 400 and answer.json()["code"] == "InvalidRequest"


@pytest.mark.service  # two Storage servers of its own
def test_more_than_1000_names_only_with_hard_limits(database_url: str, tmp_path: Path) -> None:
    names = [f"u/too-many-{i}" for i in range(1001)]
    for hard_limits, expected in ((False, 200), (True, 400)):
        config = StorageConfig(
            database_url, tmp_path / "objects", SERVICE_KEY, JWT_SECRET, request_hard_limits=hard_limits
        )
        served = serve_in_thread(create_storage_app(config))
        try:
            answer = httpx.request(
                "DELETE",
                f"{served.url}/storage/v1/object/edit-inputs",
                json={"prefixes": names},
                headers={"Authorization": f"Bearer {SERVICE_KEY}"},
            )
        finally:
            served.stop()
        assert answer.status_code == expected
        if hard_limits:
            assert answer.json()["message"] == "Bulk object requests are limited to 1000 objects per request."
        else:
            assert answer.json() == []


def test_a_delete_in_sql_is_refused_as_on_supabase(db: psycopg.Connection[Row]) -> None:
    """Storage's migration 0055: only its API (which sets storage.allow_delete_query) deletes rows."""
    db.execute("insert into storage.objects (bucket_id, name) values ('edit-inputs', 'u/sql.png')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Use the Storage API instead"):
        db.execute("delete from storage.objects where name = 'u/sql.png'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("delete from storage.buckets where id = 'edit-outputs'")
    assert db.execute("select count(*) as n from storage.objects where name = 'u/sql.png'").fetchone() == {
        "n": 1
    }
