"""Batches in SQL: one ``edit_batches`` insert makes one request per image, under every rule and limit
of a single insert, all or none; each request lives on its own; counts, progress and cancel; and what a
hostile signed-in user cannot do with another's batch."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import errors

from processor.domain import reasons, rules
from processor.domain.reasons import reason_for_constraint
from tests.conftest import acting_as

Row = dict[str, Any]
Db = psycopg.Connection[Row]


def store(db: Db, paths: Sequence[str]) -> None:
    for path in paths:
        db.execute(
            "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s) on conflict do nothing",
            (path,),
        )


def insert_batch(db: Db, user: uuid.UUID, paths: Sequence[str], **columns: Any) -> uuid.UUID:
    """Insert a batch as ``user`` would through PostgREST; returns its id."""
    values = {"prompt": "make it blue", "input_paths": list(paths), **columns}
    with acting_as(db, "authenticated", user) as conn:
        row = conn.execute(
            f"insert into edit_batches ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) "
            "returning id",
            tuple(values.values()),
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def requests_of(db: Db, batch_id: uuid.UUID) -> list[Row]:
    return db.execute(
        "select r.* from edit_requests r join edit_batches b on b.id = r.batch_id where r.batch_id = %s "
        "order by array_position(b.input_paths, r.input_paths[1])",
        (batch_id,),
    ).fetchall()


def progress_of(db: Db, batch_id: uuid.UUID) -> Row:
    row = db.execute("select * from edit_batch_progress where id = %s", (batch_id,)).fetchone()
    assert row is not None
    return row


def counts(db: Db) -> tuple[int, int]:
    row = db.execute(
        "select (select count(*) from edit_batches) as batches, (select count(*) from edit_requests) as requests"
    ).fetchone()
    assert row is not None
    return int(row["batches"]), int(row["requests"])


@pytest.fixture
def user(make_user: Callable[[], uuid.UUID]) -> uuid.UUID:
    return make_user()


@pytest.fixture
def paths(db: Db, user: uuid.UUID) -> Iterator[list[str]]:
    names = [f"{user}/batch/{index}.png" for index in range(3)]
    store(db, names)
    yield names


def test_one_insert_makes_one_request_per_image_with_the_same_parameters(
    db: Db, user: uuid.UUID, paths: list[str]
) -> None:
    reference = f"{user}/style.png"
    store(db, [reference])
    batch = insert_batch(
        db,
        user,
        paths,
        reference_paths=[reference],
        num_inference_steps=8,
        seed=7,
        true_cfg_scale=2.5,
        speed="fast",
    )
    rows = requests_of(db, batch)
    assert [row["input_paths"] for row in rows] == [[path, reference] for path in paths]
    for row in rows:
        assert row["batch_id"] == batch and row["user_id"] == user and row["status"] == "queued"
        assert (row["prompt"], row["num_inference_steps"], row["seed"], row["true_cfg_scale"], row["speed"]) == (
            "make it blue", 8, 7, 2.5, "fast",
        )  # fmt: skip
        # What the batch left out takes edit_requests' own defaults (one place for them).
        assert (row["negative_prompt"], row["guidance_scale"], row["base"], row["loras"]) == (
            rules.DEFAULT_NEGATIVE_PROMPT, rules.DEFAULT_GUIDANCE_SCALE, rules.DEFAULT_BASE, [],
        )  # fmt: skip
    assert len({row["id"] for row in rows}) == 3


def test_owners_read_batch_id_and_the_progress_view(db: Db, user: uuid.UUID, paths: list[str]) -> None:
    batch = insert_batch(db, user, paths)
    with acting_as(db, "authenticated", user) as conn:
        ids = conn.execute("select batch_id from edit_requests").fetchall()
        view = conn.execute("select requests, queued, finished, progress from edit_batch_progress").fetchall()
    assert ids == [{"batch_id": batch}] * 3
    assert view == [{"requests": 3, "queued": 3, "finished": 0, "progress": 0.0}]


def test_each_request_is_claimed_failed_and_finished_on_its_own(
    db: Db, user: uuid.UUID, paths: list[str]
) -> None:
    batch = insert_batch(db, user, paths)
    first = db.execute("select * from claim_edit_request('worker-1', 60)").fetchone()
    second = db.execute("select * from claim_edit_request('worker-2', 60)").fetchone()
    assert first is not None and second is not None
    assert first["id"] != second["id"] and first["batch_id"] == second["batch_id"] == batch
    db.execute(
        "select fail_edit_request(%s, 'worker-1', 'bad image', false, 'truncated_image')", (first["id"],)
    )
    db.execute("select heartbeat_edit_request(%s, 'worker-2', 0.5, 60)", (second["id"],))
    statuses = {row["id"]: row["status"] for row in requests_of(db, batch)}
    assert statuses[first["id"]] == "failed" and statuses[second["id"]] == "processing"
    assert sorted(statuses.values()) == ["failed", "processing", "queued"]
    view = progress_of(db, batch)
    assert (view["failed"], view["processing"], view["queued"], view["finished"]) == (1, 1, 1, 1)
    assert view["progress"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert db.execute(
        "select complete_edit_request(%s, 'worker-2', 'out.png', '{}') as ok", (second["id"],)
    ).fetchone() == {"ok": True}
    assert progress_of(db, batch)["succeeded"] == 1


def test_cancel_batch_cancels_what_has_not_finished_and_leaves_the_rest(
    db: Db, user: uuid.UUID, make_user: Callable[[], uuid.UUID]
) -> None:
    names = [f"{user}/b/{index}.png" for index in range(4)]
    store(db, names)
    batch = insert_batch(db, user, names)
    done = db.execute("select * from claim_edit_request('w', 60)").fetchone()
    running = db.execute("select * from claim_edit_request('w', 60)").fetchone()
    assert done is not None and running is not None
    db.execute("select complete_edit_request(%s, 'w', 'out.png', '{}')", (done["id"],))
    with acting_as(db, "authenticated", user) as conn:
        assert conn.execute("select cancel_edit_batch(%s) as n", (batch,)).fetchone() == {"n": 3}
    statuses = {row["id"]: row["status"] for row in requests_of(db, batch)}
    assert statuses.pop(done["id"]) == "succeeded"
    assert set(statuses.values()) == {"canceled"}
    # The running worker hears it as it does for cancel_edit_request.
    assert db.execute(
        "select heartbeat_edit_request(%s, 'w', 0.5, 60) as answer", (running["id"],)
    ).fetchone() == {"answer": "canceled"}
    view = progress_of(db, batch)
    assert (view["succeeded"], view["canceled"], view["finished"], view["progress"]) == (1, 3, 4, 1.0)
    with acting_as(db, "authenticated", user) as conn:
        assert conn.execute("select cancel_edit_batch(%s) as n", (batch,)).fetchone() == {"n": 0}


def test_a_batch_over_the_in_flight_limit_is_refused_whole(db: Db, user: uuid.UUID) -> None:
    db.execute("insert into edit_user_limits (user_id, max_in_flight) values (%s, 3)", (user,))
    names = [f"{user}/{index}.png" for index in range(4)]
    with pytest.raises(psycopg.Error) as refused:
        insert_batch(db, user, names)
    assert refused.value.sqlstate == reasons.QUOTA_SQLSTATE
    assert "max_in_flight" in str(refused.value)
    assert counts(db) == (0, 0)
    insert_batch(db, user, names[:3])
    assert counts(db) == (1, 3)
    # The batch's requests count like any others: one more request is over the limit.
    with pytest.raises(psycopg.Error) as again:
        insert_batch(db, user, names[3:])
    assert again.value.sqlstate == reasons.QUOTA_SQLSTATE
    assert counts(db) == (1, 3)


def test_the_hourly_cost_limit_counts_every_request_of_a_batch(db: Db, user: uuid.UUID) -> None:
    # 10 requests of 40 steps at 1 MP cost 400: over a limit of 399, refused whole.
    db.execute("insert into edit_user_limits (user_id, max_cost_per_hour) values (%s, 399)", (user,))
    with pytest.raises(psycopg.Error) as refused:
        insert_batch(db, user, [f"{user}/{index}.png" for index in range(10)])
    assert refused.value.sqlstate == reasons.QUOTA_SQLSTATE and "max_cost_per_hour" in str(refused.value)
    assert counts(db) == (0, 0)


@pytest.mark.parametrize(
    ("size", "constraint"),
    [(0, "edit_batches_not_empty"), (rules.MAX_BATCH_SIZE + 1, "edit_batches_size")],
    ids=["empty", "over-max"],
)
def test_the_batch_size_is_bounded(db: Db, user: uuid.UUID, size: int, constraint: str) -> None:
    with pytest.raises(errors.CheckViolation) as refused:
        insert_batch(db, user, [f"{user}/{index}.png" for index in range(size)])
    assert refused.value.diag.constraint_name == constraint
    assert counts(db) == (0, 0)


def test_a_batch_at_the_maximum_is_accepted(db: Db, user: uuid.UUID) -> None:
    insert_batch(db, user, [f"{user}/{index}.png" for index in range(rules.MAX_BATCH_SIZE)])
    assert counts(db) == (1, rules.MAX_BATCH_SIZE)


def test_the_schema_spells_max_batch_size(db: Db) -> None:
    row = db.execute(
        "select pg_get_constraintdef(oid) as def from pg_constraint where conname = 'edit_batches_size'"
    ).fetchone()
    assert row is not None and f"<= {rules.MAX_BATCH_SIZE}" in str(row["def"])


@pytest.mark.parametrize(
    ("columns", "references", "constraint", "code"),
    [
        ({"num_inference_steps": 1}, 0, "edit_requests_steps_within_rules", "invalid_parameter"),
        ({"prompt": " "}, 0, "edit_requests_prompt_not_blank", "invalid_prompt"),
        ({"width": 40, "height": 40}, 0, "edit_requests_size_valid", "invalid_size"),
        ({}, rules.MAX_IMAGES, "edit_requests_input_count", "too_many_images"),
    ],
    ids=["steps-1", "blank-prompt", "bad-size", "too-many-references"],
)
def test_each_requests_rules_refuse_the_batch_whole_with_their_reason(
    db: Db, user: uuid.UUID, columns: dict[str, Any], references: int, constraint: str, code: str
) -> None:
    refs = [f"{user}/ref{index}.png" for index in range(references)]
    with pytest.raises(errors.CheckViolation) as refused:
        insert_batch(db, user, [f"{user}/a.png", f"{user}/b.png"], reference_paths=refs, **columns)
    assert refused.value.diag.constraint_name == constraint
    assert reason_for_constraint(constraint) == code
    assert counts(db) == (0, 0)


def test_an_unknown_lora_refuses_the_batch(db: Db, user: uuid.UUID) -> None:
    with pytest.raises(errors.CheckViolation, match="unknown LoRA: nope"):
        insert_batch(db, user, [f"{user}/a.png"], loras=psycopg.types.json.Jsonb([{"name": "nope"}]))
    assert counts(db) == (0, 0)


# --- Hostile users ------------------------------------------------------------------------------------


@pytest.fixture
def victim_batch(db: Db, user: uuid.UUID, paths: list[str]) -> uuid.UUID:
    return insert_batch(db, user, paths)


def test_another_user_cannot_read_or_cancel_a_batch(
    db: Db, user: uuid.UUID, victim_batch: uuid.UUID, make_user: Callable[[], uuid.UUID]
) -> None:
    hostile = make_user()
    with acting_as(db, "authenticated", hostile) as conn:
        assert conn.execute("select id from edit_batches").fetchall() == []
        assert conn.execute("select id from edit_batch_progress").fetchall() == []
        assert (
            conn.execute("select id from edit_requests where batch_id = %s", (victim_batch,)).fetchall() == []
        )
        assert conn.execute("select cancel_edit_batch(%s) as n", (victim_batch,)).fetchone() == {"n": 0}
    assert {row["status"] for row in requests_of(db, victim_batch)} == {"queued"}


def test_a_caller_without_a_sub_cancels_nothing(db: Db, victim_batch: uuid.UUID) -> None:
    with db.transaction():
        db.execute("select set_config('request.jwt.claims', '{\"role\": \"authenticated\"}', true)")
        db.execute("set local role authenticated")
        assert db.execute("select cancel_edit_batch(%s) as n", (victim_batch,)).fetchone() == {"n": 0}
    assert {row["status"] for row in requests_of(db, victim_batch)} == {"queued"}


def test_operators_cancel_any_batch(db: Db, victim_batch: uuid.UUID) -> None:
    with acting_as(db, "service_role") as conn:
        assert conn.execute("select cancel_edit_batch(%s) as n", (victim_batch,)).fetchone() == {"n": 3}


def test_a_batch_cannot_use_another_users_images(
    db: Db, user: uuid.UUID, paths: list[str], make_user: Callable[[], uuid.UUID]
) -> None:
    hostile = make_user()
    own = f"{hostile}/mine.png"
    for inputs, references in (([paths[0]], []), ([own], [paths[1]]), ([own, paths[2]], [])):
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            insert_batch(db, hostile, inputs, reference_paths=references)
    assert counts(db) == (0, 0)


def test_a_batch_cannot_be_made_for_another_user(
    db: Db, user: uuid.UUID, make_user: Callable[[], uuid.UUID]
) -> None:
    hostile = make_user()
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        insert_batch(db, hostile, [f"{user}/a.png"], user_id=user)
    assert counts(db) == (0, 0)


def test_a_request_cannot_be_filed_under_another_users_batch(
    db: Db, victim_batch: uuid.UUID, make_user: Callable[[], uuid.UUID]
) -> None:
    hostile = make_user()
    with (
        pytest.raises(errors.InsufficientPrivilege, match="row-level security"),
        acting_as(db, "authenticated", hostile) as conn,
    ):
        conn.execute(
            "insert into edit_requests (prompt, input_paths, batch_id) values ('x', %s, %s)",
            ([f"{hostile}/a.png"], victim_batch),
        )
    assert len(requests_of(db, victim_batch)) == 3


def test_users_cannot_change_or_delete_batches(db: Db, user: uuid.UUID, victim_batch: uuid.UUID) -> None:
    for statement in (
        "update edit_batches set prompt = 'x'",
        "delete from edit_batches",
        "update edit_requests set batch_id = null",
    ):
        with pytest.raises(errors.InsufficientPrivilege), acting_as(db, "authenticated", user) as conn:
            conn.execute(statement)


def test_anon_gets_nothing(db: Db, victim_batch: uuid.UUID) -> None:
    for statement in (
        "select id from edit_batches",
        "select id from edit_batch_progress",
        "insert into edit_batches (prompt, input_paths) values ('x', '{a/b.png}')",
        f"select cancel_edit_batch('{victim_batch}')",
    ):
        with pytest.raises(errors.InsufficientPrivilege), acting_as(db, "anon") as conn:
            conn.execute(statement)
