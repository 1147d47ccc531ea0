"""``edit-processor dev``'s stand-in for Supabase Auth's password sign-in answers as GoTrue does
(supabase/auth internal/api/token.go and errors.go; the platform gateway's apikey check), so the try
page and the docs' ``curl`` sign in on dev exactly as against Supabase."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from processor.devtools.auth_server import (
    DEV_EMAIL,
    DEV_PASSWORD,
    DEV_USER_ID,
    AuthConfig,
    auth_mount,
    create_password_user,
)
from processor.devtools.serving import serve_in_thread
from processor.devtools.storage_server import StorageConfig, create_storage_app
from processor.devtools.tokens import mint_token
from processor.entrypoints.auth import TokenVerifier
from tests import tiers
from tests.conftest import JWT_SECRET, SERVICE_KEY
from tests.test_supabase_project import SEED, SEED_EMAIL, SEED_PASSWORD, SEED_USER

ANON_KEY = mint_token(JWT_SECRET, role="anon")
Row = dict[str, Any]


@pytest.fixture
@tiers.needs("service")
def supabase(database_url: str, tmp_path: Path) -> Iterator[str]:
    """Storage and the Auth stand-in at one address, as dev runs them, with dev's user."""
    create_password_user(database_url, DEV_USER_ID, DEV_EMAIL, DEV_PASSWORD)
    auth = AuthConfig(database_url, JWT_SECRET, frozenset({ANON_KEY, SERVICE_KEY}))
    storage = StorageConfig(database_url, tmp_path / "objects", SERVICE_KEY, JWT_SECRET)
    served = serve_in_thread(create_storage_app(storage, beside=[auth_mount(auth)]))
    try:
        yield served.url
    finally:
        served.stop()


def sign_in(
    url: str, body: object, *, key: str | None = ANON_KEY, grant: str = "password", version: str | None = None
) -> httpx.Response:
    headers = {"apikey": key} if key else {}
    if version:
        headers["X-Supabase-Api-Version"] = version
    return httpx.post(f"{url}/auth/v1/token", params={"grant_type": grant}, json=body, headers=headers)


def test_devs_user_is_the_seeds_user() -> None:
    assert (DEV_USER_ID, DEV_EMAIL, DEV_PASSWORD) == (SEED_USER, SEED_EMAIL, SEED_PASSWORD)
    seed = SEED.read_text()
    assert str(DEV_USER_ID) in seed and f"'{DEV_EMAIL}'" in seed and f"crypt('{DEV_PASSWORD}'" in seed


def test_the_password_grant_answers_as_gotrue(supabase: str, db: psycopg.Connection[Row]) -> None:
    answer = sign_in(supabase, {"email": "Dev@Example.test", "password": DEV_PASSWORD})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "expires_at", "refresh_token", "user"}
    assert (body["token_type"], body["expires_in"]) == ("bearer", 3600)
    user = body["user"]
    assert (user["id"], user["email"], user["aud"], user["role"]) == (
        str(DEV_USER_ID),
        DEV_EMAIL,
        "authenticated",
        "authenticated",
    )
    assert user["identities"][0]["provider"] == "email" and user["last_sign_in_at"] is not None

    # An access token the processor accepts, with GoTrue's claims.
    assert TokenVerifier(jwt_secret=JWT_SECRET).verify(f"Bearer {body['access_token']}").id == DEV_USER_ID
    claims = jwt.decode(body["access_token"], JWT_SECRET, algorithms=["HS256"], audience="authenticated")
    assert claims["iss"] == f"{supabase}/auth/v1" and claims["exp"] == body["expires_at"]
    assert (claims["email"], claims["aal"], claims["amr"][0]["method"]) == (DEV_EMAIL, "aal1", "password")
    assert {"session_id", "app_metadata", "user_metadata", "is_anonymous", "phone"} <= claims.keys()
    seen = db.execute("select last_sign_in_at from auth.users where id = %s", (DEV_USER_ID,)).fetchone()
    assert seen is not None and seen["last_sign_in_at"] is not None


@pytest.mark.parametrize("version", [None, "2024-01-01"])
def test_refusals_have_gotrues_codes_in_both_error_shapes(
    supabase: str, db: psycopg.Connection[Row], version: str | None
) -> None:
    db.execute("insert into auth.users (id, email, instance_id, aud) values (%s, 'nopass@example.test', %s, 'authenticated')",
               (uuid.uuid4(), uuid.UUID(int=0)))  # fmt: skip
    unconfirmed = uuid.uuid4()
    create_password_user(db.info.dsn, unconfirmed, "new@example.test", "pw-123456")
    db.execute("update auth.users set email_confirmed_at = null where id = %s", (unconfirmed,))

    def refusal(answer: httpx.Response) -> tuple[int, str, str]:
        body = answer.json()
        if version is None:
            assert set(body) == {"code", "error_code", "msg"} and body["code"] == answer.status_code
            return answer.status_code, body["error_code"], body["msg"]
        assert set(body) == {"code", "message"}
        assert answer.headers["x-supabase-api-version"] == version
        return answer.status_code, body["code"], body["message"]

    # One answer for an unknown email, a user without a password and a wrong password: no oracle.
    invalid = (400, "invalid_credentials", "Invalid login credentials")
    for body in (
        {"email": "nobody@example.test", "password": DEV_PASSWORD},
        {"email": "nopass@example.test", "password": ""},
        {"email": DEV_EMAIL, "password": "wrong"},
    ):
        assert refusal(sign_in(supabase, body, version=version)) == invalid
    assert refusal(
        sign_in(supabase, {"email": "new@example.test", "password": "pw-123456"}, version=version)
    ) == (
        400,
        "email_not_confirmed",
        "Email not confirmed",
    )
    assert refusal(sign_in(supabase, {"password": "x"}, version=version)) == (
        400,
        "validation_failed",
        "missing email or phone",
    )
    assert refusal(sign_in(supabase, {}, grant="magic", version=version)) == (
        400,
        "invalid_credentials",
        "unsupported_grant_type",
    )
    bad_json = httpx.post(
        f"{supabase}/auth/v1/token?grant_type=password",
        content=b"{not json",
        headers={"apikey": ANON_KEY, **({"X-Supabase-Api-Version": version} if version else {})},
    )
    assert refusal(bad_json)[:2] == (400, "bad_json")


def test_the_gateway_wants_a_known_api_key_and_answers_any_origin(supabase: str) -> None:
    body = {"email": DEV_EMAIL, "password": DEV_PASSWORD}
    missing = sign_in(supabase, body, key=None)
    assert (missing.status_code, missing.json()) == (401, {"message": "No API key found in request"})
    wrong = sign_in(supabase, body, key=mint_token("another-secret-of-at-least-32-chars!", role="anon"))
    assert (wrong.status_code, wrong.json()) == (401, {"message": "Invalid authentication credentials"})
    assert sign_in(supabase, body, key=SERVICE_KEY).status_code == 200

    preflight = httpx.options(
        f"{supabase}/auth/v1/token?grant_type=password",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "apikey, content-type, x-client-info, x-supabase-api-version",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "http://localhost:5173")
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert re.search(r"\bapikey\b", allowed) and "x-supabase-api-version" in allowed
