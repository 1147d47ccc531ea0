"""Users' access tokens: what the REST API and MCP accept, and that anything else is a clean 401."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI

from processor.devtools.serving import serve_in_thread
from processor.devtools.tokens import mint_token
from processor.entrypoints.auth import AuthError, TokenVerifier
from tests import tiers

SECRET = "s" * 40
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
@tiers.needs("service")
def jwks_url() -> Iterator[str]:
    app = FastAPI()
    keys = {"keys": [public_jwk(RSA_KEY, "rsa-1", "RS256"), public_jwk(EC_KEY, "ec-1", "ES256")]}

    @app.get("/auth/v1/.well-known/jwks.json")
    async def jwks() -> dict[str, Any]:
        return keys

    with serve_in_thread(app) as served:
        yield f"{served.url}/auth/v1/.well-known/jwks.json"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": str(uuid.uuid4()),
        "role": "authenticated",
        "aud": "authenticated",
        "exp": now + 60,
        **extra,
    }


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_hs256_and_asymmetric_user_tokens_are_accepted(jwks_url: str) -> None:
    verifier = TokenVerifier(jwt_secret=SECRET, jwks_url=jwks_url)
    user = uuid.uuid4()
    assert verifier.verify(bearer(mint_token(SECRET, sub=user))).id == user
    rs = jwt.encode(claims(sub=str(user)), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(sub=str(user)), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
    assert verifier.verify(bearer(rs)).id == user
    assert verifier.verify(bearer(es)).id == user


def forged_header(token: str, **header: Any) -> str:
    """The same token with its header replaced (the signature no longer matters: it is refused first)."""
    _, payload, signature = token.split(".")
    encoded = jwt.utils.base64url_encode(json.dumps(header).encode()).decode()
    return f"{encoded}.{payload}.{signature}"


@pytest.mark.parametrize(
    "make",
    [
        # An RS256 header naming the EC key: PyJWT raised TypeError here (an unauthenticated 500).
        lambda: forged_header(
            jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"}), alg="RS256", kid="ec-1"
        ),
        lambda: forged_header(
            jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"}),
            alg="ES256",
            kid="rsa-1",
        ),
        lambda: forged_header(mint_token(SECRET), alg="none"),
        lambda: forged_header(mint_token(SECRET), alg="RS256", kid="no-such-key"),
        lambda: forged_header(mint_token(SECRET), alg="HS256", kid=["a list"]),
        lambda: "not.a.token",
        lambda: "e30." * 3,
        lambda: jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"),
        lambda: jwt.encode(claims(), "another secret of enough length!", algorithm="HS256"),
        lambda: jwt.encode(claims(role="service_role"), SECRET, algorithm="HS256"),
        lambda: jwt.encode(claims(sub="not-a-uuid"), SECRET, algorithm="HS256"),
    ],
    ids=[
        "rs256-header-ec-key",
        "es256-header-rsa-key",
        "alg-none",
        "unknown-kid",
        "kid-not-a-string",
        "garbage",
        "empty-parts",
        "expired",
        "wrong-secret",
        "service-role",
        "subject-not-a-user",
    ],
)
def test_every_undecodable_or_foreign_token_is_an_auth_error(jwks_url: str, make: Any) -> None:
    verifier = TokenVerifier(jwt_secret=SECRET, jwks_url=jwks_url)
    with pytest.raises(AuthError):
        verifier.verify(bearer(make()))
