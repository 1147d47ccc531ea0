"""The Storage-compatible server behaves like Supabase Storage where our product depends on it
(observed against the real server v1.70.6, https://github.com/supabase/storage; docs/supabase-fidelity.md):
owners, trigger firings,
upserts, policies, errors. Errors are HTTP 400 with the real code only in the body."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt
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


def refused(response: httpx.Response, status: str, code: str, error: str, message: str | None = None) -> None:
    """The real server's error answer: HTTP 400 whatever the error (below 500), the real
    status as a string in the body, with the ``code`` and the backwards-compatible ``error``."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["statusCode"], body["code"], body["error"]) == (status, code, error), body
    if message is not None:
        assert body["message"] == message


def not_found(response: httpx.Response) -> None:
    assert response.status_code == 400
    assert response.json() == {
        "statusCode": "404",
        "code": "NoSuchKey",
        "error": "not_found",
        "message": "Object not found",
    }


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

    rows = {
        r["name"]: r
        for r in db.execute("select name, owner, owner_id, metadata, user_metadata from storage.objects")
    }
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
    assert rows[f"{user}/mine.png"]["user_metadata"] == {}


def test_a_service_key_upsert_over_a_users_object_keeps_the_user_as_owner(
    storage_server: StorageServer, db: psycopg.Connection[Row], make_user: Any
) -> None:
    user = make_user()
    path = f"{user}/mine.png"
    assert upload(storage_server, storage_server.token(user), path).status_code == 200
    assert (
        upload(storage_server, storage_server.service_key, path, b"\x89PNG z", upsert=True).status_code == 200
    )
    row = db.execute("select owner, owner_id from storage.objects where name = %s", (path,)).fetchone()
    assert row == {"owner": user, "owner_id": str(user)}


def test_downloads_and_info_answer_as_the_real_server(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    token = storage_server.token(user)
    assert upload(storage_server, token, f"{user}/a.png").status_code == 200
    download = get(storage_server, token, f"{user}/a.png")
    assert download.status_code == 200
    assert download.headers["cache-control"] == "max-age=3600"
    assert download.headers["accept-ranges"] == "bytes"
    assert download.headers["last-modified"].endswith(" GMT")
    assert download.headers["etag"].startswith('"') and "x-robots-tag" in download.headers
    info = httpx.get(
        f"{storage_server.url}/storage/v1/object/info/edit-inputs/{user}/a.png",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    # ``metadata`` here is the user metadata, empty for a plain upload; the system fields are spread out.
    assert info["metadata"] == {}
    assert (info["content_type"], info["size"], info["cache_control"]) == ("image/png", 6, "max-age=3600")


def test_download_query_makes_an_attachment_as_the_real_server(
    storage_server: StorageServer, make_user: Any
) -> None:
    # supabase/storage src/storage/renderer/renderer.ts (handleDownload): ?download names the file,
    # an empty one leaves the name to the browser (the object's), no ?download is no attachment.
    user = make_user()
    token = storage_server.token(user)
    assert upload(storage_server, token, f"{user}/a.png").status_code == 200
    signed = httpx.post(
        f"{storage_server.url}/storage/v1/object/sign/edit-inputs/{user}/a.png",
        headers={"Authorization": f"Bearer {token}"},
        json={"expiresIn": 60},
    ).json()["signedURL"]
    url = f"{storage_server.url}/storage/v1{signed}"
    assert "content-disposition" not in httpx.get(url).headers
    assert httpx.get(url + "&download=").headers["content-disposition"] == "attachment;"
    named = httpx.get(url, params={**dict(httpx.URL(url).params), "download": "my photo.png"})
    assert named.headers["content-disposition"] == (
        "attachment; filename=my%20photo.png; filename*=UTF-8''my%20photo.png;"
    )
    authenticated = httpx.get(
        f"{storage_server.url}/storage/v1/object/authenticated/edit-inputs/{user}/a.png?download=",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert authenticated.headers["content-disposition"] == "attachment;"


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
    refused(second, "409", "KeyAlreadyExists", "Duplicate", "The resource already exists")


def test_policies_keep_users_in_their_own_folder(storage_server: StorageServer, make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    assert upload(storage_server, storage_server.token(alice), f"{alice}/a.png").status_code == 200

    evil = upload(storage_server, storage_server.token(bob), f"{alice}/evil.png")
    refused(evil, "403", "AccessDenied", "Unauthorized", "new row violates row-level security policy")
    # Another user's object is not there as far as bob can tell.
    not_found(get(storage_server, storage_server.token(bob), f"{alice}/a.png"))
    signing = httpx.post(
        f"{storage_server.url}/storage/v1/object/sign/edit-inputs/{alice}/a.png",
        json={"expiresIn": 60},
        headers={"Authorization": f"Bearer {storage_server.token(bob)}"},
    )
    not_found(signing)
    assert get(storage_server, storage_server.token(alice), f"{alice}/a.png").status_code == 200


def test_anon_can_neither_write_nor_read(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    assert upload(storage_server, storage_server.token(user), f"{user}/a.png").status_code == 200
    anon = storage_server.token(role="anon")
    refused(upload(storage_server, anon, f"{user}/b.png"), "403", "AccessDenied", "Unauthorized")
    not_found(get(storage_server, anon, f"{user}/a.png"))
    no_header = httpx.get(f"{storage_server.url}/storage/v1/object/edit-inputs/{user}/a.png")
    refused(no_header, "400", "InvalidRequest", "InvalidRequest")


def test_users_read_only_their_own_outputs(storage_server: StorageServer, make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    path = f"{alice}/{uuid.uuid4()}.png"
    assert upload(storage_server, storage_server.service_key, path, bucket="edit-outputs").status_code == 200
    assert get(storage_server, storage_server.token(alice), path, bucket="edit-outputs").status_code == 200
    not_found(get(storage_server, storage_server.token(bob), path, bucket="edit-outputs"))


def test_a_wrong_bucket_is_no_such_bucket(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    for token in (storage_server.service_key, storage_server.token(user)):
        wrong = get(storage_server, token, f"{user}/a.png", bucket="no-such-bucket")
        refused(wrong, "404", "NoSuchBucket", "Bucket not found", "Bucket not found")


def test_bucket_limits_are_enforced(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    token = storage_server.token(user)
    gif = upload(storage_server, token, f"{user}/a.gif", b"GIF89a", content_type="image/gif")
    refused(gif, "415", "InvalidMimeType", "invalid_mime_type", "mime type image/gif is not supported")
    huge = upload(storage_server, token, f"{user}/huge.png", b"\0" * (20 * 1024 * 1024 + 1))
    refused(huge, "413", "EntityTooLarge", "Payload too large")


def test_bad_or_expired_tokens_are_refused(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    expired = storage_server.token(user, expires_in=-10)
    refused(upload(storage_server, expired, f"{user}/a.png"), "403", "AccessDenied", "Unauthorized")
    refused(upload(storage_server, "not-a-jwt", f"{user}/a.png"), "403", "AccessDenied", "Unauthorized")
    # Signed with another secret: the real server's body says 403 Unauthorized, signature verification failed.
    forged = jwt.encode(
        {"sub": str(user), "role": "authenticated", "exp": int(time.time()) + 60},
        "another-secret-of-at-least-32-characters",
        algorithm="HS256",
    )
    refused(
        upload(storage_server, forged, f"{user}/a.png"),
        "403",
        "AccessDenied",
        "Unauthorized",
        "signature verification failed",
    )


def test_a_tampered_signed_url_is_invalid_jwt(storage_server: StorageServer, make_user: Any) -> None:
    user = make_user()
    assert upload(storage_server, storage_server.token(user), f"{user}/a.png").status_code == 200
    signed = httpx.post(
        f"{storage_server.url}/storage/v1/object/sign/edit-inputs/{user}/a.png",
        json={"expiresIn": 60},
        headers={"Authorization": f"Bearer {storage_server.token(user)}"},
    ).json()["signedURL"]
    assert httpx.get(f"{storage_server.url}/storage/v1{signed}").content == b"\x89PNG x"
    head, _, signature = signed.rpartition(".")
    tampered = f"{head}.{signature[::-1]}"
    refused(httpx.get(f"{storage_server.url}/storage/v1{tampered}"), "400", "InvalidJWT", "InvalidJWT")


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
    not_found(get(storage_server, token, f"{user}/a.png"))
