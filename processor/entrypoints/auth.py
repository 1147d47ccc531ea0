"""Verify Supabase user access tokens for the REST API and MCP over HTTP.

Accepted: a Supabase Auth access token (``role: authenticated``, ``aud: authenticated``,
a uuid ``sub``, not expired), signed with the project's legacy JWT secret (HS256) or
with one of the project's asymmetric signing keys published at
``{SUPABASE_URL}/auth/v1/.well-known/jwks.json``. Refused: anything else, including the
anon and service-role keys and ``sb_`` API keys, so a client can never act as the service.
"""

from __future__ import annotations

import uuid
from typing import Any

import jwt

from processor.domain.errors import Unauthorized
from processor.domain.users import User

_ASYMMETRIC = ("RS256", "ES256", "EdDSA")


class AuthError(Unauthorized):
    """The caller is not an authenticated Supabase user (HTTP 401)."""


class TokenVerifier:
    """Checks bearer tokens; give it the JWT secret, a JWKS URL, or both."""

    def __init__(self, *, jwt_secret: str | None = None, jwks_url: str | None = None) -> None:
        if not jwt_secret and not jwks_url:
            raise ValueError("a JWT secret or a JWKS URL is needed to verify user tokens")
        self._secret = jwt_secret
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=600) if jwks_url else None

    def verify(self, authorization: str | None) -> User:
        """The user behind an ``Authorization: Bearer …`` header, or ``AuthError``."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token")
        token = authorization[7:].strip()
        if token.startswith("sb_"):
            raise AuthError("API keys are not accepted; send the user's access token")
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            key: Any
            if algorithm == "HS256" and self._secret:
                key = self._secret
            elif algorithm in _ASYMMETRIC and self._jwks is not None:
                signing_key = self._jwks.get_signing_key_from_jwt(token)
                # The header's alg is the caller's word; the key's own type decides.
                if signing_key.algorithm_name != algorithm:
                    raise AuthError(f"token algorithm {algorithm!r} does not fit its key")
                key = signing_key.key
            else:
                raise AuthError(f"unsupported token algorithm {algorithm!r}")
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience="authenticated",
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except (jwt.InvalidTokenError, jwt.PyJWKClientError, jwt.PyJWKError) as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        except (TypeError, ValueError, KeyError) as exc:
            # PyJWT raises these for some crafted headers; any token we cannot decode is a 401.
            raise AuthError("undecodable token") from exc
        if claims.get("role") != "authenticated":
            raise AuthError("only authenticated users may call this API")
        try:
            user_id = uuid.UUID(str(claims["sub"]))
        except ValueError as exc:
            raise AuthError("token subject is not a user id") from exc
        return User(id=user_id, claims=claims)
