"""Mint Supabase-style JWTs (HS256 with the project's JWT secret) for tests and local runs."""

from __future__ import annotations

import time
import uuid

import jwt


def mint_token(
    secret: str,
    *,
    role: str = "authenticated",
    sub: uuid.UUID | str | None = None,
    expires_in: int = 3600,
    audience: str | None = "authenticated",
) -> str:
    """A token shaped like Supabase Auth's access tokens (or the anon/service_role keys)."""
    now = int(time.time())
    claims: dict[str, object] = {"role": role, "iat": now, "exp": now + expires_in, "iss": "supabase"}
    if sub is not None:
        claims["sub"] = str(sub)
    if audience is not None and role == "authenticated":
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
