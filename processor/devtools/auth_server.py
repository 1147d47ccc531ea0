"""A stand-in for Supabase Auth's password sign-in, for ``edit-processor dev`` only.

``dev`` runs no GoTrue, yet its try page, and the docs' ``curl`` of
``POST {SUPABASE_URL}/auth/v1/token?grant_type=password``, sign the development user in. This answers
that one call as GoTrue does behind the platform's API gateway, on the Storage stand-in's address
(so ``SUPABASE_URL`` holds both, as on Supabase). It never stands in for Auth in production.

As GoTrue does it (supabase/auth ``internal/api/token.go``: ``Token``, ``ResourceOwnerPasswordGrant``,
``issueRefreshToken``, ``generateAccessToken``; ``internal/models/user.go``: ``FindUserByEmailAndAudience``;
``internal/api/errors.go``: ``HandleResponseError``):
- the gateway first: no ``apikey`` is 401 ``{"message": "No API key found in request"}``, an unknown
  one 401 ``{"message": "Invalid authentication credentials"}``; any origin may call (CORS);
- the user is found by ``instance_id`` (the zero uuid), ``lower(email)``, ``aud`` (``authenticated``)
  and ``is_sso_user = false``; the password is compared with ``encrypted_password`` (bcrypt);
- refusals are 400 with an error code: ``invalid_credentials`` ("Invalid login credentials") for an
  unknown email, a user without a password or a wrong one, ``email_not_confirmed``,
  ``validation_failed`` ("missing email or phone"), ``bad_json``, and ``unsupported_grant_type``
  under ``invalid_credentials`` for other grants. The body is ``{"code": 400, "error_code": ...,
  "msg": ...}``, or with ``X-Supabase-Api-Version: 2024-01-01`` (what supabase-js sends)
  ``{"code": ..., "message": ...}`` and the header echoed;
- success is 200 ``{access_token, token_type: "bearer", expires_in, expires_at, refresh_token, user}``;
  the access token is HS256 with the project's JWT secret and GoTrue's claims (``iss``, ``sub``,
  ``aud``, ``exp``, ``iat``, ``email``, ``phone``, ``app_metadata``, ``user_metadata``, ``role``,
  ``aal``, ``amr``, ``session_id``, ``is_anonymous``); ``last_sign_in_at`` is set.
Not covered: refresh tokens (the one returned opens nothing), sessions and sign-out, sign-up, phone
sign-in, MFA, rate limits, asymmetric signing keys.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import bcrypt
import jwt
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

PREFIX = "/auth/v1"
INSTANCE_ID = uuid.UUID(int=0)
AUDIENCE = "authenticated"
API_VERSION_HEADER = "X-Supabase-Api-Version"
API_VERSION_2024 = "2024-01-01"
INVALID_LOGIN = "Invalid login credentials"
BCRYPT_COST = 10  # golang.org/x/crypto/bcrypt's DefaultCost, which GoTrue uses

# The user supabase/seed.sql adds, made the same way by ``edit-processor dev`` (tests check they agree).
DEV_USER_ID = uuid.UUID("00000000-0000-4000-8000-00000000d3e0")
DEV_EMAIL = "dev@example.test"
DEV_PASSWORD = "dev-password"


@dataclass(frozen=True)
class AuthConfig:
    database_url: str
    jwt_secret: str
    api_keys: frozenset[str]
    """The keys the gateway lets through: the publishable (anon) key and the service key."""
    expires_in: int = 3600  # GoTrue's JWT_EXP default


def create_password_user(database_url: str, user_id: uuid.UUID, email: str, password: str) -> None:
    """A confirmed email user who can sign in, written as supabase/seed.sql writes one (``auth.users``
    with a bcrypt hash and empty token strings, ``auth.identities`` with the email identity)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()
    identity = {"sub": str(user_id), "email": email, "email_verified": True}
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            """insert into auth.users (
                 instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                 raw_app_meta_data, raw_user_meta_data, created_at, updated_at,
                 confirmation_token, recovery_token, email_change_token_new, email_change)
               values (%s, %s, 'authenticated', 'authenticated', %s, %s, now(),
                       '{"provider": "email", "providers": ["email"]}', '{}', now(), now(), '', '', '', '')
               on conflict (id) do nothing""",
            (INSTANCE_ID, user_id, email, hashed),
        )
        conn.execute(
            """insert into auth.identities
                 (provider_id, user_id, identity_data, provider, created_at, updated_at)
               values (%s, %s, %s, 'email', now(), now())
               on conflict (provider_id, provider) do nothing""",
            (str(user_id), user_id, Jsonb(identity)),
        )


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(request: Request, refusal: _Refusal) -> Response:
    if request.headers.get(API_VERSION_HEADER, "") >= API_VERSION_2024:
        return JSONResponse(
            {"code": refusal.code, "message": refusal.message},
            status_code=refusal.status,
            headers={API_VERSION_HEADER: API_VERSION_2024},
        )
    return JSONResponse(
        {"code": refusal.status, "error_code": refusal.code, "msg": refusal.message},
        status_code=refusal.status,
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _user_json(row: dict[str, Any], identities: list[dict[str, Any]]) -> dict[str, Any]:
    """``models.User`` as GoTrue renders it (the fields this stand-in has)."""
    return {
        "id": str(row["id"]),
        "aud": row["aud"],
        "role": row["role"],
        "email": row["email"],
        "email_confirmed_at": _iso(row["email_confirmed_at"]),
        "phone": "",
        "confirmed_at": _iso(row["email_confirmed_at"]),
        "last_sign_in_at": _iso(row["last_sign_in_at"]),
        "app_metadata": row["raw_app_meta_data"] or {},
        "user_metadata": row["raw_user_meta_data"] or {},
        "identities": [
            {
                "identity_id": str(item["id"]),
                "id": item["provider_id"],
                "user_id": str(item["user_id"]),
                "identity_data": item["identity_data"],
                "provider": item["provider"],
                "last_sign_in_at": _iso(item["last_sign_in_at"]),
                "created_at": _iso(item["created_at"]),
                "updated_at": _iso(item["updated_at"]),
                "email": item["email"],
            }
            for item in identities
        ],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "is_anonymous": row["is_anonymous"],
    }


async def _password_grant(request: Request, config: AuthConfig) -> dict[str, Any]:
    try:
        params = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise _Refusal(400, "bad_json", f"Could not parse request body as JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise _Refusal(400, "bad_json", "Could not parse request body as JSON")
    email, phone = str(params.get("email") or ""), str(params.get("phone") or "")
    password = str(params.get("password") or "")
    if email and phone:
        raise _Refusal(
            400, "validation_failed", "Only an email address or phone number should be provided on login."
        )
    if not email:
        # Phone sign-in is not covered: a phone finds no user here.
        if phone:
            raise _Refusal(400, "invalid_credentials", INVALID_LOGIN)
        raise _Refusal(400, "validation_failed", "missing email or phone")
    async with await psycopg.AsyncConnection.connect(
        config.database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        row = await (
            await conn.execute(
                """select * from auth.users
                    where instance_id = %s and lower(email) = lower(%s) and aud = %s and not is_sso_user""",
                (INSTANCE_ID, email, AUDIENCE),
            )
        ).fetchone()
        hashed = (row or {}).get("encrypted_password") or ""
        valid = bool(hashed) and await anyio.to_thread.run_sync(
            bcrypt.checkpw, password.encode(), hashed.encode()
        )
        if row is None or not valid:
            raise _Refusal(400, "invalid_credentials", INVALID_LOGIN)
        if row["email_confirmed_at"] is None:
            raise _Refusal(400, "email_not_confirmed", "Email not confirmed")
        row = await (
            await conn.execute(
                "update auth.users set last_sign_in_at = now() where id = %s returning *", (row["id"],)
            )
        ).fetchone()
        assert row is not None
        identities = await (
            await conn.execute("select * from auth.identities where user_id = %s", (row["id"],))
        ).fetchall()
    now = int(time.time())
    expires_at = now + config.expires_in
    claims = {
        "iss": f"{str(request.base_url).rstrip('/')}{PREFIX}",
        "sub": str(row["id"]),
        "aud": row["aud"],
        "exp": expires_at,
        "iat": now,
        "email": row["email"],
        "phone": "",
        "app_metadata": row["raw_app_meta_data"] or {},
        "user_metadata": row["raw_user_meta_data"] or {},
        "role": row["role"],
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": now}],
        "session_id": str(uuid.uuid4()),
        "is_anonymous": row["is_anonymous"],
    }
    return {
        "access_token": jwt.encode(claims, config.jwt_secret, algorithm="HS256"),
        "token_type": "bearer",
        "expires_in": config.expires_in,
        "expires_at": expires_at,
        "refresh_token": secrets.token_urlsafe(9),
        "user": _user_json(row, identities),
    }


def auth_mount(config: AuthConfig) -> Mount:
    """``/auth/v1`` with the password grant, for ``create_storage_app(..., beside=[...])``."""

    async def token(request: Request) -> Response:
        key = request.headers.get("apikey")
        if not key:
            return JSONResponse({"message": "No API key found in request"}, status_code=401)
        if key not in config.api_keys:
            return JSONResponse({"message": "Invalid authentication credentials"}, status_code=401)
        try:
            if request.query_params.get("grant_type") != "password":
                raise _Refusal(400, "invalid_credentials", "unsupported_grant_type")
            return JSONResponse(await _password_grant(request, config))
        except _Refusal as refusal:
            return _error(request, refusal)

    app = Starlette(
        routes=[Route("/token", token, methods=["POST"])],
        # The platform's gateway answers every origin, so pages anywhere can sign in.
        middleware=[
            Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
        ],
    )
    return Mount(PREFIX, app=app)
