"""The Storage-compatible server behaves like Supabase Storage where our product depends on it
(``../shared/research/supabase.md`` §10): owners, trigger firings, upserts, policies, errors."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import StorageServer

Row = dict[str, Any]


def upload(
    server: StorageServer,
    token: str,
    path: str,
    data: bytes = b"\x89PNG x",
    *,
    upsert: bool = False,
    content_type: str = "image/png",
    bucket: str = "edit-inputs",
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if upsert:
        headers["x-upsert"] = "true"
    return httpx.post(
        f"{server.url}/storage/v1/object/{bucket}/{path}",
        headers=headers,
        files={"file": (path.rsplit("/", 1)[-1], data, content_type)},
    )


def get(server: StorageServer, token: str, path: str, bucket: str = "edit-inputs") -> httpx.Response:
    return httpx.get(
        f"{server.url}/storage/v1/object/{bucket}/{path}", headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture
def firings(db: psycopg.Connection[Row]) -> psycopg.Connection[Row]:
    """Record every committed firing of AFTER INSERT / AFTER UPDATE triggers on storage.objects."""
    db.execute(
        """
        create table public.object_firings (op text, name text, owner_id text);
        create function public.record_object_firing() returns trigger language plpgsql security definer as $$
        begin
          insert into public.object_firings values (tg_op, new.name, new.owner_id);
          return null;
        end $$;
        create trigger record_object_firing after insert or update on storage.objects
          for each row execute function public.record_object_firing();
        """
    )
    return db


def test_service_key_upload_has_no_owner_and_a_user_upload_is_owned(
    storage_server: StorageServer, db: psycopg.Connection[Row], make_user: Any
) -> None:
    user = make_user()
    assert upload(storage_server, storage_server.service_key, "x/service.png").status_code == 200
    assert upload(storage_server, storage_server.token(user), f"{user}/mine.png").status_code == 200

    rows = {r["name"]: r for r in db.execute("select name, owner, owner_id, metadata from storage.objects")}
    assert rows["x/service.png"]["owner"] is None and rows["x/service.png"]["owner_id"] is None
    assert rows[f"{user}/mine.png"]["owner"] == user
    assert rows[f"{user}/mine.png"]["owner_id"] == str(user)
    metadata = rows[f"{user}/mine.png"]["metadata"]
    assert {
        "eTag",
        "size",
        "mimetype",
        "cacheControl",
        "lastModified",
        "contentLength",
        "httpStatusCode",
    } <= set(metadata)
    assert metadata["mimetype"] == "image/png" and metadata["cacheControl"] == "max-age=3600"


def test_insert_trigger_commits_once_and_an_upsert_is_an_update(
    storage_server: StorageServer, firings: psycopg.Connection[Row], make_user: Any
) -> None:
    user = make_user()
    token = storage_server.token(user)
    assert upload(storage_server, token, f"{user}/a.png").status_code == 200
    assert upload(storage_server, token, f"{user}/a.png", b"\x89PNG y", upsert=True).status_code == 200

    ops = [r["op"] for r in firings.execute("select op from public.object_firings")]
    # The rolled-back permission check fired too, but left nothing behind.
    assert ops == ["INSERT", "UPDATE"]
    assert get(storage_server, token, f"{user}/a.png").content == b"\x89PNG y"


def test_duplicate_without_upsert_is_refused(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    token = storage_server.token(user)
    assert upload(storage_server, token, f"{user}/a.png").status_code == 200
    second = upload(storage_server, token, f"{user}/a.png")
    assert second.status_code == 409
    assert second.json()["error"] == "Duplicate"


def test_policies_keep_users_in_their_own_folder(storage_server: StorageServer, make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    assert upload(storage_server, storage_server.token(alice), f"{alice}/a.png").status_code == 200

    refused = upload(storage_server, storage_server.token(bob), f"{alice}/evil.png")
    assert refused.status_code == 403
    assert refused.json()["message"] == "new row violates row-level security policy"
    assert get(storage_server, storage_server.token(bob), f"{alice}/a.png").status_code == 404
    assert get(storage_server, storage_server.token(alice), f"{alice}/a.png").status_code == 200


def test_anon_can_neither_write_nor_read(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    assert upload(storage_server, storage_server.token(user), f"{user}/a.png").status_code == 200
    anon = storage_server.token(role="anon")
    assert upload(storage_server, anon, f"{user}/b.png").status_code == 403
    assert get(storage_server, anon, f"{user}/a.png").status_code == 404


def test_users_read_only_their_own_outputs(storage_server: StorageServer, make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    path = f"{alice}/{uuid.uuid4()}.png"
    assert upload(storage_server, storage_server.service_key, path, bucket="edit-outputs").status_code == 200
    assert get(storage_server, storage_server.token(alice), path, bucket="edit-outputs").status_code == 200
    assert get(storage_server, storage_server.token(bob), path, bucket="edit-outputs").status_code == 404


def test_bucket_limits_are_enforced(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    token = storage_server.token(user)
    gif = upload(storage_server, token, f"{user}/a.gif", b"GIF89a", content_type="image/gif")
    assert gif.status_code == 415
    huge = upload(storage_server, token, f"{user}/huge.png", b"\0" * (20 * 1024 * 1024 + 1))
    assert huge.status_code == 413


def test_bad_or_expired_tokens_are_refused(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    expired = storage_server.token(user, expires_in=-10)
    assert upload(storage_server, expired, f"{user}/a.png").status_code == 400
    assert upload(storage_server, "not-a-jwt", f"{user}/a.png").status_code == 400


def test_list_remove_and_then_not_found(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    token = storage_server.token(user)
    for name in ("a.png", "b.png", "sub/c.png"):
        assert upload(storage_server, token, f"{user}/{name}").status_code == 200

    listed = httpx.post(
        f"{storage_server.url}/storage/v1/object/list/edit-inputs",
        json={"prefix": str(user), "limit": 100, "offset": 0},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert sorted(entry["name"] for entry in listed) == ["a.png", "b.png", "sub"]

    removed = httpx.request(
        "DELETE",
        f"{storage_server.url}/storage/v1/object/edit-inputs",
        json={"prefixes": [f"{user}/a.png"]},
        headers={"Authorization": f"Bearer {storage_server.service_key}"},
    )
    assert [r["name"] for r in removed.json()] == [f"{user}/a.png"]
    missing = get(storage_server, token, f"{user}/a.png")
    assert missing.status_code == 404
    assert missing.json() == {"statusCode": "404", "error": "not_found", "message": "Object not found"}
