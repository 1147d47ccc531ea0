"""Stream tokens: what opens one request's event stream from a browser.

A browser's ``EventSource`` cannot send an ``Authorization`` header, and an access token in a URL
ends up in access logs, proxies and browser history. So the page asks for a stream token with its
bearer header (``POST /v1/edits/{id}/stream-token``) and opens ``/v1/edits/{id}/events?token=...``
with it. A token names one user and one request, lasts ``STREAM_TOKEN_SECONDS`` (never past the
access token it was minted with), opens only that request's stream and is accepted nowhere else:
its audience is not Supabase's, and its key is not the project's JWT secret but one derived from
the service key every replica has, so any replica verifies what another minted
(docs/decisions/0090-browser-ready-api.md).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from processor.domain.rules import STREAM_TOKEN_SECONDS
from processor.domain.users import User
from processor.entrypoints.auth import AuthError

AUDIENCE = "qwen-edit-processor:event-stream"
_DERIVATION = b"qwen-edit-processor stream tokens v1"


@dataclass(frozen=True, slots=True)
class StreamToken:
    token: str
    expires_at: datetime


class StreamTokens:
    """Mints and checks stream tokens (HS256 JWTs under a key of their own)."""

    def __init__(
        self, key: bytes, *, seconds: int = STREAM_TOKEN_SECONDS, clock: Callable[[], float] = time.time
    ) -> None:
        if len(key) < 32:
            raise ValueError("a stream-token key needs at least 32 bytes")
        self._key = key
        self._seconds = seconds
        self._clock = clock

    @classmethod
    def derived_from(cls, secret: str, **options: Any) -> StreamTokens:
        """A key of their own from a secret every replica shares (the service key): HMAC-SHA256 with a
        fixed label, so the secret itself never signs anything a user holds."""
        return cls(hmac.new(secret.encode(), _DERIVATION, hashlib.sha256).digest(), **options)

    def mint(self, user: User, request_id: uuid.UUID) -> StreamToken:
        now = int(self._clock())
        expires = now + self._seconds
        access_expires = user.claims.get("exp")
        if isinstance(access_expires, int | float):
            expires = min(expires, int(access_expires))
        claims = {"aud": AUDIENCE, "sub": str(user.id), "rid": str(request_id), "iat": now, "exp": expires}
        token = jwt.encode(claims, self._key, algorithm="HS256")
        return StreamToken(token, datetime.fromtimestamp(expires, UTC))

    def verify(self, token: str, request_id: uuid.UUID) -> User:
        """The user the token was minted for, if it is this request's and alive; else ``AuthError``."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=AUDIENCE,
                options={"require": ["exp", "sub", "rid", "aud"]},
                leeway=0,
            )
            if claims["rid"] != str(request_id):
                raise AuthError("this stream token is for another request")
            user_id = uuid.UUID(str(claims["sub"]))
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("stream token expired; ask for a new one") from exc
        except (jwt.InvalidTokenError, ValueError, TypeError, KeyError) as exc:
            raise AuthError("invalid stream token") from exc
        return User(id=user_id, claims={"sub": str(user_id), "role": "authenticated"})
