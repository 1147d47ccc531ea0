"""Hostile callers of the SQL API: privilege comes from the role, never from what the claims leave out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import OWNER, acting_as

Row = dict[str, Any]


def status(db: psycopg.Connection[Row], request_id: uuid.UUID) -> str:
    row = db.execute("select status from edit_requests where id = %s", (request_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def cancel_with_claims(
    db: psycopg.Connection[Row], role: str, claims: dict[str, Any], request_id: uuid.UUID
) -> bool:
    """``cancel_edit_request`` as ``role`` with exactly these claims (no helper adds a ``sub``)."""
    with db.transaction():
        db.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        db.execute(f"set local role {role}")
        row = db.execute("select cancel_edit_request(%s) as ok", (request_id,)).fetchone()
    assert row is not None
    return bool(row["ok"])


@pytest.mark.parametrize(
    "claims",
    [
        {"role": "authenticated"},  # a token without `sub`
        {},  # no claims at all
        {"role": "service_role"},  # a role claim that is not the session's role
    ],
    ids=["no-sub", "no-claims", "role-claim-only"],
)
def test_an_authenticated_caller_without_a_sub_cancels_nothing(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID], claims: dict[str, Any]
) -> None:
    request_id = add_request()
    assert cancel_with_claims(db, "authenticated", claims, request_id) is False
    assert status(db, request_id) == "queued"


def test_another_users_sub_cancels_nothing(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID], make_user: Callable[[], uuid.UUID]
) -> None:
    request_id = add_request()
    other = make_user()
    claims = {"role": "service_role", "sub": str(other)}
    assert cancel_with_claims(db, "authenticated", claims, request_id) is False
    assert status(db, request_id) == "queued"


def test_the_owner_and_operators_still_cancel(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    mine, theirs, by_postgres = add_request(), add_request(), add_request()
    with acting_as(db, "authenticated", OWNER) as conn:
        assert conn.execute("select cancel_edit_request(%s) as ok", (mine,)).fetchone() == {"ok": True}
    # service_role (the processor's key, or a login role granted it) needs no `sub`.
    assert cancel_with_claims(db, "service_role", {"role": "service_role"}, theirs) is True
    # postgres (the processor's direct connection), with no claims at all.
    assert db.execute("select cancel_edit_request(%s) as ok", (by_postgres,)).fetchone() == {"ok": True}
    assert {status(db, r) for r in (mine, theirs, by_postgres)} == {"canceled"}


def test_a_login_role_granted_service_role_is_an_operator(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    role = f"processor_{uuid.uuid4().hex[:8]}"
    db.execute(f"create role {role} nologin in role service_role")
    try:
        assert cancel_with_claims(db, role, {}, request_id) is True
        assert status(db, request_id) == "canceled"
    finally:
        db.execute(f"drop role {role}")
