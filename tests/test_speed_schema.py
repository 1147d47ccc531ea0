"""The speed/LoRA migration on a real database: columns, checks, the allowlist trigger, grants,
and the claim returning the new columns."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from processor.domain.rules import MAX_REQUEST_LORAS, SPEED_PRESETS

Conn = psycopg.Connection[dict[str, Any]]


def insert_as_user(db: Conn, as_role: Callable[..., Any], user: uuid.UUID, **columns: Any) -> uuid.UUID:
    values = {"prompt": "make it blue", "input_paths": [f"{user}/in.png"], **columns}
    with as_role(db, "authenticated", user) as conn:
        row = conn.execute(
            f"insert into edit_requests ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) returning id",
            tuple(values.values()),
        ).fetchone()
    return uuid.UUID(str(row["id"]))


@pytest.fixture
def allow(db: Conn) -> Callable[..., None]:
    def _allow(*names: str, enabled: bool = True) -> None:
        for name in names:
            db.execute("insert into edit_loras (name, enabled) values (%s, %s)", (name, enabled))

    return _allow


def test_users_insert_speed_and_allowlisted_loras(
    db: Conn, as_role: Callable[..., Any], make_user: Callable[[], uuid.UUID], allow: Callable[..., None]
) -> None:
    allow("ink", "watercolor")
    user = make_user()
    loras = [{"name": "ink", "scale": 0.5}, {"name": "watercolor", "scale": None}]
    request = insert_as_user(db, as_role, user, speed="fast", loras=Jsonb(loras))
    row = db.execute("select speed, loras from edit_requests where id = %s", (request,)).fetchone()
    assert row == {"speed": "fast", "loras": loras}
    default = insert_as_user(db, as_role, user)
    row = db.execute("select speed, loras from edit_requests where id = %s", (default,)).fetchone()
    assert row == {"speed": None, "loras": []}


def test_an_unknown_or_disabled_lora_is_refused_at_insert_with_a_reason(
    db: Conn, as_role: Callable[..., Any], make_user: Callable[[], uuid.UUID], allow: Callable[..., None]
) -> None:
    allow("ink")
    allow("retired", enabled=False)
    user = make_user()
    for name in ("nope", "retired"):
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            insert_as_user(db, as_role, user, loras=Jsonb([{"name": name}]))
        assert refused.value.sqlstate == "23514"
        assert refused.value.diag.constraint_name == "edit_requests_loras_allowed"
        assert refused.value.diag.message_primary == f"unknown LoRA: {name}"


@pytest.mark.parametrize(
    "loras",
    [
        {"name": "ink"},  # not an array
        [{"name": "Ink"}],
        [{"name": "ink"}, {"name": "ink"}],
        [{"name": "ink", "scale": 5}],
        [{"name": "ink", "scale": "1"}],
        [{"name": "ink", "weight": 1}],
        ["ink"],
        [{"name": f"l{i}"} for i in range(MAX_REQUEST_LORAS + 1)],
    ],
)
def test_malformed_lora_lists_are_refused_by_the_check(
    db: Conn,
    as_role: Callable[..., Any],
    make_user: Callable[[], uuid.UUID],
    allow: Callable[..., None],
    loras: Any,
) -> None:
    allow("ink", *(f"l{i}" for i in range(MAX_REQUEST_LORAS + 1)))
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        insert_as_user(db, as_role, make_user(), loras=Jsonb(loras))
    assert refused.value.diag.constraint_name == "edit_requests_loras_valid"


def test_the_speed_check_matches_the_domain(
    db: Conn, as_role: Callable[..., Any], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    for speed in SPEED_PRESETS:
        insert_as_user(db, as_role, user, speed=speed)
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        insert_as_user(db, as_role, user, speed="ludicrous")
    assert refused.value.diag.constraint_name == "edit_requests_speed_valid"


def test_users_read_enabled_loras_and_cannot_write_the_allowlist(
    db: Conn, as_role: Callable[..., Any], make_user: Callable[[], uuid.UUID], allow: Callable[..., None]
) -> None:
    allow("ink")
    allow("retired", enabled=False)
    user = make_user()
    with as_role(db, "authenticated", user) as conn:
        assert [r["name"] for r in conn.execute("select name from edit_loras").fetchall()] == ["ink"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_role(db, "authenticated", user) as conn:
        conn.execute("insert into edit_loras (name) values ('mine')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_role(db, "anon") as conn:
        conn.execute("select name from edit_loras")


def test_the_claim_returns_the_new_columns(
    db: Conn, add_request: Callable[..., uuid.UUID], allow: Callable[..., None]
) -> None:
    allow("ink")
    request = add_request(speed="fastest", loras=Jsonb([{"name": "ink", "scale": 0.7}]))
    claimed = db.execute("select * from claim_edit_request('w1', 60, %s)", (request,)).fetchone()
    assert claimed is not None and claimed["id"] == request
    assert (claimed["speed"], claimed["loras"]) == ("fastest", [{"name": "ink", "scale": 0.7}])
